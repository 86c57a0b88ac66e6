"""Map a native event to an OCSF 1.8.0 Detection Finding (class_uid 2004).

Only events a person should see become findings: ``sync_scored`` with decision
``pause`` or ``review``, ``connector_stale`` and ``invalid_record``. ``proceed`` is not a
finding (`is_finding` says so; `to_detection_finding` refuses it).

Mapping, in short:

- ``finding_info.uid`` is the native ``event_id``: UUIDv5 over (event type, connector,
  sync_id) -- or (connector, last sync time) for a stale episode -- so SOAR tools
  de-duplicate re-sends and replays. ``metadata.uid`` adds the event time.
- Each model reason is one ``anomaly`` (observed value) with its ``baseline`` (expected
  value and range for this time of week) in ``anomaly_analyses[0]``; rule hits are a
  second analysis whose anomalies name the rule.
- ``severity_id`` follows the native severity; ``risk_level_id`` too; ``risk_score``
  grows with ``-log10(tail_probability)``; ``confidence_id`` is High for rules and own
  models, Medium for a cold start (pooled model), Low for ``unscorable``.
- ``remediation.desc`` tells the operator what to do, including the exact
  ``syncguard resume`` / ``syncguard label`` commands.
- The native event is kept whole under ``unmapped.syncguard`` for playbooks that already
  parse it.

Attributes from the ``security_control`` profile (confidence, risk, action,
disposition, is_alert) are used, so that profile is named in ``metadata.profiles``.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Mapping
from typing import Any

from detector import __version__
from detector.events.native import EVENT_NAMESPACE, event_time, validate

__all__ = [
    "OCSF_VERSION",
    "CLASS_UID",
    "CATEGORY_UID",
    "PROFILES",
    "is_finding",
    "to_detection_finding",
]

OCSF_VERSION = "1.8.0"
CLASS_UID = 2004
CATEGORY_UID = 2
ACTIVITY_CREATE = 1
PROFILES = ("security_control",)

# native severity -> (severity_id, caption) and (risk_level_id, caption), from the 1.8.0 enums.
_SEVERITY = {
    "info": (1, "Informational"),
    "low": (2, "Low"),
    "medium": (3, "Medium"),
    "high": (4, "High"),
    "critical": (5, "Critical"),
}
_RISK_LEVEL = {
    "info": (0, "Info"),
    "low": (1, "Low"),
    "medium": (2, "Medium"),
    "high": (3, "High"),
    "critical": (4, "Critical"),
}
# A finding's risk never falls below what its severity implies, even without a tail probability
# (rule hits, invalid records, unscorable syncs).
_RISK_FLOOR = {"info": 5, "low": 25, "medium": 50, "high": 70, "critical": 90}
# -log10(p) at which risk_score reaches 100: one normal sync in a million scores this high.
_RISK_FULL_SCALE = 6.0
_CONFIDENCE = {1: "Low", 2: "Medium", 3: "High"}

_PRODUCT = {"name": "syncguard", "vendor_name": "syncguard", "uid": "syncguard"}
_TARGET_TYPE = "Identity Connector"

# Rule -> what an operator should check first. Unknown rules get the generic advice only.
_RULE_HINTS = {
    "auth_failure": "check the connector's API credentials (expired or rotated secret, revoked "
    "token, missing scopes)",
    "sync_failed": "read the connector's run log for the failure and fix it before the next sync",
    "count_to_zero": "check the connector's scopes, filters and API permissions for the resource "
    "type that returned nothing",
    "field_entirely_null": "check the connector's field mapping and the source schema (a renamed "
    "or removed attribute)",
    "resource_missing": "check the connector's configuration and scopes for the resource type "
    "it no longer reports",
    "overdue_sync": "check the connector's scheduler or job runner, and whether the sync before "
    "it was skipped",
    "partial_sync": "read the connector's run log for what it could not read (rate limits, "
    "time-outs, permissions) and re-run the sync",
    "loss_beyond_history": "check the connector's run log, paging and API permissions for the "
    "resource type that lost records; confirm with its owner before letting removals through",
    "truncated_listing": "check the connector's paging (a page or result limit, an expired "
    "cursor, a time-out mid-listing) and re-run the sync before letting removals through",
    "repeated_snapshot": "check the connector's cache, export job or source snapshot: it has "
    "returned the same data for several syncs in a row; force a full re-read",
    "stale": "check the connector's scheduler or job runner",
    "unscorable": "no model could score this sync: check `syncguard models list` and retrain "
    "with `syncguard train` if no champion is available",
    "invalid_record": "fix the connector's output so it meets the sync-record contract",
}


def is_finding(event: Mapping[str, Any]) -> bool:
    """True if the native event becomes an OCSF finding (everything but ``proceed``)."""
    return event.get("event_type") != "sync_scored" or event.get("decision") in ("pause", "review")


def to_detection_finding(
    event: Mapping[str, Any],
    *,
    product_version: str = __version__,
    tenant_uid: str | None = None,
) -> dict[str, Any]:
    """Build an OCSF 1.8.0 Detection Finding from a native event.

    Parameters
    ----------
    event : mapping
        A native event (see `detector.events.native`): ``sync_scored`` with decision pause
        or review, ``connector_stale`` or ``invalid_record``.
    product_version : str
        syncguard version reported in ``metadata.product.version``.
    tenant_uid : str, optional
        Written to ``metadata.tenant_uid`` when given (multi-tenant SIEMs route on it).

    Returns
    -------
    dict
        The finding, JSON-ready. Same native event in, same finding out.

    Raises
    ------
    ValueError
        For a ``proceed`` event or an unknown ``event_type``.
    NativeEventError
        If ``event`` breaks the native event schema.
    """
    kind = event.get("event_type")
    if kind not in ("sync_scored", "connector_stale", "invalid_record"):
        raise ValueError(f"cannot map event_type {kind!r} to an OCSF finding")
    # A malformed native event would give a malformed finding: refuse it here, readably.
    validate(event)
    if not is_finding(event):
        raise ValueError(
            f"sync {event.get('sync_id')!r} was decided 'proceed': only pause and review "
            "become OCSF findings"
        )
    when_ms = _epoch_ms(event)
    severity = event["severity"]
    severity_id, severity_caption = _SEVERITY[severity]
    risk_level_id, risk_level_caption = _RISK_LEVEL[severity]
    confidence_id = _confidence_id(event)
    pause = event["decision"] == "pause"
    connector_id = event["connector_id"]
    finding_uid = event["event_id"]
    title = _title(event)

    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {**_PRODUCT, "version": product_version},
        "profiles": list(PROFILES),
        # One uid per emitted OCSF event; the finding uid stays the same across re-emissions.
        "uid": str(uuid.uuid5(EVENT_NAMESPACE, f"ocsf\x1f{finding_uid}\x1f{when_ms}")),
        "original_event_uid": finding_uid,
        "event_code": kind,
        "log_name": "syncguard",
    }
    if event.get("replay"):
        metadata["labels"] = ["replay"]
    if tenant_uid:
        metadata["tenant_uid"] = tenant_uid

    finding_info: dict[str, Any] = {
        "uid": finding_uid,
        "title": title,
        "desc": _description(event),
        "types": [_finding_type(kind)],
        "analytic": _analytic(event),
        "created_time": when_ms,
        "data_sources": ["identity connector sync records"],
    }
    related = _related_analytics(event)
    if related:
        finding_info["related_analytics"] = related
    if event.get("sync_id"):
        finding_info["related_events"] = [
            {"uid": event["sync_id"], "type": "Identity Connector Sync",
             "title": f"sync {event['sync_id']} of connector {connector_id}"}
        ]

    resource: dict[str, Any] = {
        "uid": connector_id,
        "name": connector_id,
        "type": _TARGET_TYPE,
        "role_id": 1,
        "role": "Target",
        "criticality": event["criticality"],
    }
    if event.get("connector_kind"):
        resource["labels"] = [event["connector_kind"]]

    finding: dict[str, Any] = {
        "activity_id": ACTIVITY_CREATE,
        "activity_name": "Create",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + ACTIVITY_CREATE,
        "type_name": "Detection Finding: Create",
        "time": when_ms,
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": severity_caption,
        "status_id": 1,
        "status": "New",
        "status_detail": (
            "Propagation held until a person resumes the connector"
            if pause else "No hold: propagation continues"
        ),
        "message": title,
        "metadata": metadata,
        "finding_info": finding_info,
        "confidence_id": confidence_id,
        "confidence": _CONFIDENCE[confidence_id],
        "risk_level_id": risk_level_id,
        "risk_level": risk_level_caption,
        "risk_score": _risk_score(event),
        "risk_details": _risk_details(event),
        "is_alert": pause,
        # security_control outcome: a pause delays propagation; a review only observes.
        "action_id": 99 if pause else 3,
        "action": "Paused" if pause else "Observed",
        "disposition_id": 14 if pause else 15,
        "disposition": "Delayed" if pause else "Detected",
        "resources": [resource],
        "observables": [
            {"name": "resources.uid", "type_id": 10, "type": "Resource UID",
             "value": connector_id}
        ],
        "remediation": {"desc": _remediation(event)},
    }
    analyses = _anomaly_analyses(event)
    if analyses:
        finding["anomaly_analyses"] = analyses
    # Kept whole so playbooks written against the native event need no second parser.
    finding["unmapped"] = {"syncguard": copy.deepcopy(dict(event))}
    return finding


# --------------------------------------------------------------------------- pieces


def _epoch_ms(event: Mapping[str, Any]) -> int:
    return round(event_time(event).timestamp() * 1000)


def _finding_type(kind: str) -> str:
    return {
        "sync_scored": "Identity Connector Sync Anomaly",
        "connector_stale": "Identity Connector Stale",
        "invalid_record": "Identity Connector Invalid Record",
    }[kind]


def _headline(event: Mapping[str, Any]) -> str:
    """The single most useful phrase: first rule hit (rules win), else the top reason."""
    if event["event_type"] == "invalid_record":
        v = event["violation"]
        return f"field '{v['field']}' {v['rule']}"
    hits = event.get("rule_hits") or []
    if hits:
        return hits[0]["detail"]
    reasons = event.get("reasons") or []
    if reasons:
        return reasons[0]["description"]
    return "anomalous sync"


def _title(event: Mapping[str, Any]) -> str:
    cid = event["connector_id"]
    kind = event["event_type"]
    if kind == "connector_stale":
        elapsed = event["expected_interval_s"] + event["overdue_by_s"]
        since = "never synced" if event["last_sync_at"] is None else (
            f"no sync for {_duration(elapsed)}"
        )
        return (f"Connector {cid} is stale: {since} "
                f"(expected every {_duration(event['expected_interval_s'])})")
    if kind == "invalid_record":
        return f"Connector {cid} paused: invalid sync record, {_headline(event)}"
    verb = "paused" if event["decision"] == "pause" else "sync needs review"
    return f"Connector {cid} {verb}: {_headline(event)}"


def _description(event: Mapping[str, Any]) -> str:
    lines: list[str] = []
    kind = event["event_type"]
    cid = event["connector_id"]
    if kind == "sync_scored":
        lines.append(
            f"syncguard decided '{event['decision']}' for sync {event['sync_id']} of connector "
            f"{cid} ({event.get('connector_kind') or 'unknown kind'}, criticality "
            f"{event['criticality']})."
        )
        if event.get("score") is not None:
            lines.append(
                f"Score {_num(event['score'])} against cutoff {_num(event.get('cutoff'))}; "
                f"a normal sync scores this high with probability "
                f"{_num(event.get('tail_probability'))}."
            )
        if event.get("cold_start"):
            lines.append(
                "Cold start: too little history for this connector, so it was scored by the "
                "model pooled across its connector kind."
            )
        for i, reason in enumerate(event.get("reasons") or [], start=1):
            lo, hi = reason["expected_range"]
            lines.append(
                f"{i}. {reason['description']} ({reason['metric']}: observed "
                f"{_num(reason['observed'])}, expected {_num(reason['expected'])}, normal "
                f"range [{_num(lo)}, {_num(hi)}], distance {_num(reason['distance'])})."
            )
        for hit in event.get("rule_hits") or []:
            lines.append(f"Rule {hit['rule']}: {hit['detail']}.")
    elif kind == "connector_stale":
        last = event["last_sync_at"] or "never"
        lines.append(
            f"Connector {cid} last synced at {last} (sync {event.get('last_sync_id') or 'n/a'}); "
            f"it usually syncs every {_duration(event['expected_interval_s'])} and is overdue by "
            f"{_duration(event['overdue_by_s'])} at {event['checked_at']}."
        )
    else:
        lines.append(f"Rejected record: {event['violation']['message']}.")
        lines.append("syncguard fails closed: a connector that cannot report cleanly is paused.")
    if event.get("connector_paused"):
        lines.append(f"A pause is open for connector {cid} until a person resumes it.")
    if event.get("replay"):
        lines.append("Replay: re-scored from history, not a live sync.")
    return "\n".join(lines)


def _rule_names(event: Mapping[str, Any]) -> list[str]:
    if event["event_type"] == "connector_stale":
        return ["stale"]
    return [hit["rule"] for hit in event.get("rule_hits") or []]


def _model_analytic(event: Mapping[str, Any]) -> dict[str, Any]:
    analytic: dict[str, Any] = {
        "uid": "syncguard.model",
        "name": "syncguard pooled model" if event.get("cold_start") else "syncguard fleet model",
        "type_id": 4,
        "type": "Learning (ML/DL)",
        "algorithm": "seasonal baseline and isolation forest, cutoff calibrated to the "
        "false-pause budget",
    }
    if event.get("model_version"):
        analytic["version"] = str(event["model_version"])
    return analytic


def _rule_analytic(rule: str) -> dict[str, Any]:
    return {"uid": f"syncguard.rule.{rule}", "name": f"syncguard rule {rule}", "type_id": 1,
            "type": "Rule"}


def _analytic(event: Mapping[str, Any]) -> dict[str, Any]:
    # Rules always win over the model, so the first rule hit is the analytic of record.
    rules = _rule_names(event)
    return _rule_analytic(rules[0]) if rules else _model_analytic(event)


def _related_analytics(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    rules = _rule_names(event)
    related = [_rule_analytic(rule) for rule in rules[1:]]
    if rules and event.get("score") is not None:
        related.append(_model_analytic(event))
    return related


def _confidence_id(event: Mapping[str, Any]) -> int:
    if event["event_type"] != "sync_scored":
        return 3  # deterministic checks: the record broke the contract, the sync is late
    rules = _rule_names(event)
    if "unscorable" in rules and len(rules) == 1:
        return 1  # fail closed: nothing says the sync is bad, only that it could not be judged
    if rules:
        return 3
    return 2 if event.get("cold_start") else 3


def _risk_score(event: Mapping[str, Any]) -> int:
    floor = _RISK_FLOOR[event["severity"]]
    p = event.get("tail_probability")
    if p is None:
        return floor
    scaled = 100.0 * -math.log10(max(float(p), 1e-300)) / _RISK_FULL_SCALE
    return int(min(100, max(floor, round(scaled))))


def _risk_details(event: Mapping[str, Any]) -> str:
    text = (
        f"risk_score = min(100, 100 * -log10(tail_probability) / {_RISK_FULL_SCALE:g}), at "
        f"least {_RISK_FLOOR[event['severity']]} for severity {event['severity']}; "
        f"connector criticality {event['criticality']}"
    )
    p = event.get("tail_probability")
    if p is not None:
        text += f"; tail_probability {_num(p)}"
    return text


def _pattern(reason: Mapping[str, Any]) -> str:
    observed = reason["observed"]
    lo, hi = reason["expected_range"]
    if observed is not None and lo is not None and observed < lo:
        return "BELOW_EXPECTED_RANGE"
    if observed is not None and hi is not None and observed > hi:
        return "ABOVE_EXPECTED_RANGE"
    return "OUTSIDE_EXPECTED_RANGE"


def _target(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": event["connector_id"], "type": _TARGET_TYPE}]


def _anomaly_analyses(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = event["event_type"]
    analyses: list[dict[str, Any]] = []
    if kind == "connector_stale":
        parameter = "freshness.seconds_since_last_sync"
        elapsed = event["expected_interval_s"] + event["overdue_by_s"]
        analyses.append({
            "analysis_targets": _target(event),
            "anomalies": [{
                "observation_parameter": parameter,
                "observation_type": "Sync Interval",
                "observed_pattern": "OVERDUE",
                "observations": [{"value": _num(elapsed)}],
            }],
            "baselines": [{
                "observation_parameter": parameter,
                "observation_type": "Usual Sync Interval",
                "observed_pattern": f"EVERY {_num(event['expected_interval_s'])} S",
                "observations": [{"value": _num(event["expected_interval_s"])}],
            }],
        })
        return analyses
    if kind == "invalid_record":
        v = event["violation"]
        analyses.append({
            "analysis_targets": _target(event),
            "anomalies": [{
                "observation_parameter": v["field"],
                "observation_type": "Sync Record Contract",
                "observed_pattern": "CONTRACT_VIOLATION",
                "observations": [{"value": v["rule"]}],
            }],
        })
        return analyses

    reasons = event.get("reasons") or []
    if reasons:
        anomalies, baselines = [], []
        for reason in reasons:
            lo, hi = reason["expected_range"]
            anomalies.append({
                "observation_parameter": reason["metric"],
                "observation_type": "Seasonal Baseline Deviation",
                "observed_pattern": _pattern(reason),
                "observations": [{"value": _num(reason["observed"])}],
            })
            baselines.append({
                "observation_parameter": reason["metric"],
                "observation_type": "Seasonal Baseline (hour of week)",
                "observed_pattern": f"RANGE [{_num(lo)}, {_num(hi)}]",
                "observations": [{"value": _num(reason["expected"])}],
            })
        analyses.append({"analysis_targets": _target(event), "anomalies": anomalies,
                         "baselines": baselines})
    hits = event.get("rule_hits") or []
    if hits:
        analyses.append({
            "analysis_targets": _target(event),
            "anomalies": [{
                "observation_parameter": f"rule.{hit['rule']}",
                "observation_type": "Deterministic Rule",
                "observed_pattern": hit["rule"].upper(),
                "observations": [{"value": hit["detail"]}],
            } for hit in hits],
        })
    return analyses


def _remediation(event: Mapping[str, Any]) -> str:
    cid = event["connector_id"]
    kind = event["event_type"]
    pause = event["decision"] == "pause"
    hints = [_RULE_HINTS[r] for r in _rule_names(event) if r in _RULE_HINTS]
    resume = f"syncguard resume {cid} --by <you> --reason \"<what you found>\""
    steps: list[str] = []
    if pause:
        steps.append(
            f"Hold propagation of connector {cid}'s changes (above all removals and revocations) "
            "until the cause is known; syncguard keeps the connector paused until a person "
            "resumes it."
        )
    else:
        steps.append(f"No hold is in place: propagation of connector {cid} continues.")
    if kind == "invalid_record":
        steps.append(f"Fix the connector's output: {event['violation']['message']}.")
    elif kind == "connector_stale":
        steps.append(
            "Check that the connector still runs: its scheduler or job runner, its API "
            "credentials and the source system's availability."
        )
    else:
        reasons = event.get("reasons") or []
        if reasons:
            top = ", ".join(r["metric"] for r in reasons[:3])
            steps.append(f"Compare this sync with the source system for {top}.")
        steps.append(
            "Check the connector's API credentials and permissions, pagination and rate "
            "limits, and any recent change to its configuration or to the source schema."
        )
    for hint in hints:
        steps.append(hint[0].upper() + hint[1:] + ".")
    if pause:
        steps.append(
            f"If the change is real (for example a legitimate bulk change), resume with "
            f"`{resume} --false-positive`; if it was a fault, fix it, re-run the sync, then "
            f"resume with `{resume}`."
        )
    if event.get("sync_id") and kind == "sync_scored":
        steps.append(
            f"Label the sync so training learns from it: `syncguard label {event['sync_id']} "
            "fault` or `normal`."
        )
    return " ".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


def _num(value: float | int | None) -> str:
    """Numbers as people read them: integers without '.0', floats in shortest exact form."""
    if value is None:
        return "unknown"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, round(float(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return " ".join(parts[:2]) or "0s"
