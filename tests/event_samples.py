"""Native events of every kind, shared by the event-layer tests."""

from __future__ import annotations

from typing import Any

from detector.contract import Violation
from detector.events.native import Reason, RuleHit, connector_stale, invalid_record, sync_scored

SCORED_AT = "2026-11-20T14:03:41Z"


def pause_event(sync_id: str = "okta-prod:2026-11-20T14:00:07Z", **overrides: Any) -> dict:
    kwargs: dict[str, Any] = dict(
        sync_id=sync_id, connector_id="okta-prod", connector_kind="okta",
        scored_at=SCORED_AT, model_version="3", decision="pause", severity="high",
        criticality="leaver", score=1.7, cutoff=1.2, tail_probability=0.0003,
        reasons=[
            Reason("user.count_change", 8000, 18400, (18300, 18500), 41.2,
                   "user count fell to 8000, against 18300-18500 usual for Thursday 14:00"),
            Reason("user.removed_rate", 0.43, 0.0004, (0.0, 0.002), 12.5,
                   "43% of users removed, against at most 0.2% usually"),
        ],
        rule_hits=[], connector_paused=True,
    )
    kwargs.update(overrides)
    return sync_scored(**kwargs)


def review_event(**overrides: Any) -> dict:
    kwargs: dict[str, Any] = dict(
        sync_id="gh-main:2026-11-20T15:00:00Z", connector_id="gh-main", connector_kind="github",
        scored_at="2026-11-20T15:01:00Z", model_version="3", decision="review",
        severity="low", criticality="standard", score=0.9, cutoff=0.8, tail_probability=0.02,
        reasons=[Reason("api.latency_p95_ms", 4200.5, 410.0, (300.0, 650.0), 9.1,
                        "p95 latency 4200 ms, against 300-650 ms usual")],
        cold_start=True,
    )
    kwargs.update(overrides)
    return sync_scored(**kwargs)


def rule_pause_event() -> dict:
    return sync_scored(
        sync_id="vault-1:42", connector_id="vault-1", connector_kind="vault",
        scored_at=SCORED_AT, decision="pause", severity="critical", criticality="privileged",
        rule_hits=[RuleHit("auth_failure", "sync failed with error_class 'auth'"),
                   RuleHit("count_to_zero", "resource 'secret' returned 0 records")],
        connector_paused=True,
    )


def unscorable_event() -> dict:
    return sync_scored(
        sync_id="wd:7", connector_id="workday", connector_kind="workday", scored_at=SCORED_AT,
        decision="pause", severity="medium", rule_hits=[
            RuleHit("unscorable", "no model could be loaded: champion missing")],
        connector_paused=True,
    )


def proceed_event() -> dict:
    return sync_scored(sync_id="okta-prod:ok", connector_id="okta-prod", scored_at=SCORED_AT,
                       decision="proceed", severity="info", model_version="3", score=0.1,
                       cutoff=1.2, tail_probability=0.6)


def stale_event(**overrides: Any) -> dict:
    kwargs: dict[str, Any] = dict(
        connector_id="aws-iam-prod", connector_kind="aws-iam",
        checked_at="2026-11-20T18:00:00Z", last_sync_at="2026-11-20T12:00:00Z",
        last_sync_id="aws-iam-prod:2026-11-20T11:58:00Z", expected_interval_s=3600,
        severity="high", decision="pause", criticality="nhi", connector_paused=True,
    )
    kwargs.update(overrides)
    return connector_stale(**kwargs)


def violation(**overrides: Any) -> Violation:
    kwargs: dict[str, Any] = dict(
        record="line 3 (sync_id 'okta-prod:9')", field="resources.user.count",
        rule="must be an integer >= 0", line=3, sync_id="okta-prod:9",
        connector_id="okta-prod", raw='{"sync_id": "okta-prod:9", "resources": {"user": '
                                      '{"count": -1}}}',
    )
    kwargs.update(overrides)
    return Violation(**kwargs)


def invalid_event(**overrides: Any) -> dict:
    return invalid_record(violation(**overrides), scored_at=SCORED_AT, connector_kind="okta",
                          criticality="leaver")


def all_findings() -> dict[str, dict]:
    """Every native event that becomes an OCSF finding, by name."""
    return {
        "pause": pause_event(),
        "review_cold_start": review_event(),
        "rule_pause": rule_pause_event(),
        "unscorable": unscorable_event(),
        "stale": stale_event(),
        "stale_never_synced": stale_event(last_sync_at=None, last_sync_id=None,
                                          overdue_by_s=86400, decision="review"),
        "invalid_record": invalid_event(),
        "invalid_record_no_sync_id": invalid_event(sync_id=None, record="line 9", line=9),
        "replay": pause_event(replay=True),
    }
