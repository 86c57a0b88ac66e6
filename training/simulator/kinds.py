"""Connector kinds: their resource types, fields, sizes, paging and seasonality.

Everything a simulated connector *is* (as opposed to what happens to it) lives
here as plain frozen data, so that the normal-life and fault modules stay free
of kind-specific branches.

The numbers are deliberately uneven across kinds: real fleets mix directories
with 200,000 users and a 40-seat SaaS app, daily HR extracts and hourly cloud
IAM scans, fields that are almost never null and fields that are null for most
records. A detector tuned on one shape of connector should not look good here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ENTITLEMENT_ROLES",
    "KINDS",
    "KIND_WEIGHTS",
    "REGIONS",
    "SEASONALITY",
    "FamilySeasonality",
    "KindSpec",
    "ResourceSpec",
]

# Resource roles that hold access (who may do what). Access reviews clean these
# up and ``missing_entitlements`` faults empty them.
ENTITLEMENT_ROLES = frozenset({"entitlement", "membership"})


@dataclass(frozen=True)
class ResourceSpec:
    """One resource type a connector returns.

    Parameters
    ----------
    name : str
        Resource type key in ``resources`` (``user``, ``grant``, ...).
    fields : dict of str to float
        Field name -> base null rate for the kind. Each connector jitters these.
    role : str
        ``primary`` (the identity population), ``container`` (groups, roles),
        ``membership`` / ``entitlement`` (access held), ``credential``.
    size_ratio : tuple of float
        Log-uniform range of this type's size relative to the primary size;
        ignored for the primary type.
    size_floor : int
        Additive floor so small apps still have a few groups or entitlements.
    turnover : tuple of float
        Range of monthly turnover (adds and removes each, as a fraction of size).
    modify_per_day : tuple of float
        Range of daily modified records as a fraction of size.
    follows : float
        Records of this type added (removed) per primary record added (removed):
        a new user brings memberships and grants with them.
    mean_reverting : bool
        Short-lived records (tokens) whose population hovers around a level
        instead of random-walking.
    """

    name: str
    fields: dict[str, float]
    role: str
    size_ratio: tuple[float, float] = (1.0, 1.0)
    size_floor: int = 0
    turnover: tuple[float, float] = (0.01, 0.04)
    modify_per_day: tuple[float, float] = (0.002, 0.01)
    follows: float = 0.0
    mean_reverting: bool = False


@dataclass(frozen=True)
class FamilySeasonality:
    """How strongly human working patterns drive a family's churn.

    Parameters
    ----------
    night_floor : float
        Churn intensity outside business hours relative to the business peak.
    weekend : float
        Saturday intensity relative to a weekday (Sunday is 80% of that).
    holiday : float
        Intensity on a public holiday or in the year-end lull.
    latency_load : tuple of float
        Range of the extra API latency at the business-hour peak (0.5 = +50%).
    """

    night_floor: float
    weekend: float
    holiday: float
    latency_load: tuple[float, float]


@dataclass(frozen=True)
class KindSpec:
    """A connector kind (``okta``, ``aws-iam``, ...).

    Parameters
    ----------
    kind : str
        ``connector_kind`` value.
    family : str
        ``directory``, ``hris``, ``saas``, ``cloud_iam`` or ``secrets``.
    resources : tuple of ResourceSpec
        The first one is the primary type.
    size_range : tuple of int
        Log-uniform range of the primary type's size.
    page_sizes : tuple of int
        Page sizes the kind's API is configured with.
    latency_p50_ms : tuple of float
        Range of the median per-request latency at night.
    metrics : tuple of str
        Names of the ``metrics`` the kind reports (may be empty).
    tenants : tuple of str
        Tenant names used to build connector ids.
    reports_modified, reports_duplicates, reports_p95 : bool
        Optional fields not every connector reports; the detector must cope.
    """

    kind: str
    family: str
    resources: tuple[ResourceSpec, ...]
    size_range: tuple[int, int]
    page_sizes: tuple[int, ...]
    latency_p50_ms: tuple[float, float]
    metrics: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
    reports_modified: bool = True
    reports_duplicates: bool = True
    reports_p95: bool = True

    @property
    def primary(self) -> ResourceSpec:
        """The identity population (first resource type)."""
        return self.resources[0]


# --- resource types --------------------------------------------------------------

_DIR_USER = ResourceSpec(
    "user",
    {"email": 0.0005, "manager": 0.03, "department": 0.01, "title": 0.02,
     "phone": 0.18, "employee_id": 0.004, "last_login": 0.06},
    "primary", turnover=(0.012, 0.035), modify_per_day=(0.004, 0.03),
)
_ENTRA_USER = ResourceSpec(
    "user",
    {"mail": 0.002, "manager": 0.04, "department": 0.015, "job_title": 0.03,
     "usage_location": 0.01, "employee_id": 0.02, "on_premises_sid": 0.3},
    "primary", turnover=(0.012, 0.035), modify_per_day=(0.004, 0.03),
)
_DIR_GROUP = ResourceSpec(
    "group", {"owner": 0.08, "description": 0.22}, "container",
    size_ratio=(0.03, 0.12), size_floor=5, turnover=(0.01, 0.03), modify_per_day=(0.002, 0.01),
)
_ENTRA_GROUP = ResourceSpec(
    "group", {"owner": 0.12, "description": 0.3, "mail": 0.55}, "container",
    size_ratio=(0.03, 0.12), size_floor=5, turnover=(0.01, 0.03), modify_per_day=(0.002, 0.01),
)
_DIR_MEMBERSHIP = ResourceSpec(
    "group_membership", {"added_at": 0.01}, "membership",
    size_ratio=(3.0, 9.0), turnover=(0.01, 0.03), modify_per_day=(0.0, 0.0), follows=4.0,
)
_ENTRA_MEMBERSHIP = ResourceSpec(
    "group_membership", {"member_type": 0.0005}, "membership",
    size_ratio=(3.0, 9.0), turnover=(0.01, 0.03), modify_per_day=(0.0, 0.0), follows=4.0,
)
_WORKER = ResourceSpec(
    "worker",
    {"email": 0.001, "manager": 0.005, "cost_center": 0.002, "location": 0.003,
     "job_profile": 0.001, "termination_date": 0.97},
    "primary", turnover=(0.008, 0.025), modify_per_day=(0.005, 0.02),
)


def _saas(user_fields: dict[str, float], ent_fields: dict[str, float],
          grant_fields: dict[str, float]) -> tuple[ResourceSpec, ...]:
    return (
        ResourceSpec("user", user_fields, "primary", turnover=(0.02, 0.07),
                     modify_per_day=(0.002, 0.015)),
        ResourceSpec("entitlement", ent_fields, "entitlement", size_ratio=(0.01, 0.06),
                     size_floor=4, turnover=(0.01, 0.04), modify_per_day=(0.001, 0.01)),
        ResourceSpec("grant", grant_fields, "entitlement", size_ratio=(1.5, 5.0),
                     turnover=(0.02, 0.06), modify_per_day=(0.0, 0.002), follows=3.0),
    )


def _cloud(role_fields: dict[str, float], sa_fields: dict[str, float],
           binding_fields: dict[str, float]) -> tuple[ResourceSpec, ...]:
    return (
        ResourceSpec("role", role_fields, "primary", turnover=(0.02, 0.08),
                     modify_per_day=(0.002, 0.01)),
        ResourceSpec("service_account", sa_fields, "credential", size_ratio=(0.3, 2.0),
                     size_floor=3, turnover=(0.04, 0.12), modify_per_day=(0.01, 0.04)),
        ResourceSpec("binding", binding_fields, "entitlement", size_ratio=(3.0, 8.0),
                     turnover=(0.03, 0.1), modify_per_day=(0.0, 0.0), follows=2.5),
    )


# --- kinds -----------------------------------------------------------------------

KINDS: dict[str, KindSpec] = {
    "okta": KindSpec(
        "okta", "directory", (_DIR_USER, _DIR_GROUP, _DIR_MEMBERSHIP),
        size_range=(300, 200_000), page_sizes=(200, 500, 1000), latency_p50_ms=(90, 220),
        metrics=("mfa_enrolled_ratio",),
    ),
    "entra": KindSpec(
        "entra", "directory", (_ENTRA_USER, _ENTRA_GROUP, _ENTRA_MEMBERSHIP),
        size_range=(300, 200_000), page_sizes=(100, 500), latency_p50_ms=(120, 300),
        metrics=("mfa_registered_ratio", "guest_ratio"),
        tenants=("contoso", "fabrikam", "tailspin", "northwind", "woodgrove", "litware"),
    ),
    "workday": KindSpec(
        "workday", "hris", (_WORKER,),
        size_range=(200, 150_000), page_sizes=(100, 500, 1000), latency_p50_ms=(400, 1400),
        metrics=("contingent_worker_ratio",), reports_duplicates=False,
    ),
    "github": KindSpec(
        "github", "saas",
        _saas({"email": 0.35, "name": 0.2, "company": 0.6, "two_factor": 0.0005},
              {"description": 0.4, "parent": 0.7},
              {"expires_at": 0.98, "granted_by": 0.05}),
        size_range=(20, 20_000), page_sizes=(100,), latency_p50_ms=(150, 400),
        metrics=("outside_collaborator_ratio",),
    ),
    "salesforce": KindSpec(
        "salesforce", "saas",
        _saas({"email": 0.0005, "manager": 0.12, "department": 0.08, "profile": 0.0,
               "federation_id": 0.03, "last_login": 0.1},
              {"description": 0.15, "license": 0.3},
              {"assignee": 0.0, "expires_at": 0.99}),
        size_range=(20, 30_000), page_sizes=(2000,), latency_p50_ms=(200, 500),
        metrics=("license_utilization",),
    ),
    "slack": KindSpec(
        "slack", "saas",
        _saas({"email": 0.002, "title": 0.4, "real_name": 0.01, "timezone": 0.001},
              {"description": 0.35, "handle": 0.0},
              {"role": 0.0, "granted_at": 0.005}),
        size_range=(20, 50_000), page_sizes=(200, 1000), latency_p50_ms=(80, 250),
        reports_modified=False,
    ),
    "aws-iam": KindSpec(
        "aws-iam", "cloud_iam",
        _cloud({"description": 0.3, "max_session_duration": 0.0, "last_used": 0.25,
                "permissions_boundary": 0.8},
               {"owner": 0.2, "last_used": 0.35, "description": 0.5, "access_key_age": 0.05},
               {"condition": 0.92, "principal": 0.0, "policy": 0.0}),
        size_range=(20, 8_000), page_sizes=(100, 1000), latency_p50_ms=(60, 200),
        metrics=("unused_role_ratio",),
        tenants=("prod", "staging", "data", "shared", "sandbox", "security"),
    ),
    "gcp-iam": KindSpec(
        "gcp-iam", "cloud_iam",
        _cloud({"description": 0.2, "stage": 0.0, "title": 0.01},
               {"owner": 0.2, "last_used": 0.35, "display_name": 0.1, "description": 0.6},
               {"condition": 0.95, "member": 0.0, "role": 0.0}),
        size_range=(20, 5_000), page_sizes=(100, 1000), latency_p50_ms=(80, 250),
        tenants=("prod", "analytics", "ml", "platform", "dev", "edge"),
        reports_p95=False,
    ),
    "vault": KindSpec(
        "vault", "secrets",
        (
            ResourceSpec("api_key", {"owner": 0.15, "expires_at": 0.4, "last_used": 0.3,
                                     "policy": 0.0},
                         "primary", turnover=(0.04, 0.12), modify_per_day=(0.02, 0.05)),
            ResourceSpec("token", {"display_name": 0.05, "expire_time": 0.02,
                                   "entity_id": 0.1},
                         "credential", size_ratio=(0.5, 5.0), size_floor=10,
                         turnover=(3.0, 15.0), modify_per_day=(0.05, 0.2),
                         mean_reverting=True),
        ),
        size_range=(20, 20_000), page_sizes=(100, 500), latency_p50_ms=(15, 60),
        metrics=("lease_count",), reports_duplicates=False,
        tenants=("prod", "corp", "ci", "payments", "edge", "ops"),
    ),
}

# Rough fleet mix: directories and SaaS apps dominate real IGA estates.
KIND_WEIGHTS: dict[str, float] = {
    "okta": 0.14, "entra": 0.12, "workday": 0.08, "github": 0.14, "salesforce": 0.12,
    "slack": 0.12, "aws-iam": 0.10, "gcp-iam": 0.08, "vault": 0.10,
}

SEASONALITY: dict[str, FamilySeasonality] = {
    # People drive directory, HR and SaaS churn: quiet nights, weekends, holidays.
    "directory": FamilySeasonality(0.04, 0.12, 0.12, (0.3, 0.9)),
    "hris": FamilySeasonality(0.03, 0.08, 0.08, (0.2, 0.6)),
    "saas": FamilySeasonality(0.05, 0.15, 0.15, (0.3, 0.9)),
    # Automation (CI, Terraform) drives cloud IAM and secrets: flatter week.
    "cloud_iam": FamilySeasonality(0.25, 0.4, 0.4, (0.1, 0.4)),
    "secrets": FamilySeasonality(0.5, 0.7, 0.7, (0.1, 0.3)),
}

# Time zones the fleet's tenants sit in, with the region used for holidays.
REGIONS: tuple[tuple[str, str], ...] = (
    ("America/Los_Angeles", "US"), ("America/New_York", "US"), ("America/Chicago", "US"),
    ("Europe/London", "UK"), ("Europe/Berlin", "DE"), ("Europe/Paris", "FR"),
    ("Asia/Kolkata", "IN"), ("Asia/Tokyo", "JP"), ("Australia/Sydney", "AU"),
    ("America/Sao_Paulo", "BR"),
)
