"""OCSF Detection Findings, checked against the 1.8.0 schema compiled by ocsf-lib."""

from __future__ import annotations

import copy
import json

import pytest
from event_samples import all_findings, pause_event, proceed_event, review_event, stale_event
from ocsf_check import OcsfValidator, compile_schema

from detector.events.ocsf import is_finding, to_detection_finding
from detector.rules import RULES

CLASS = "detection_finding"


@pytest.fixture(scope="module")
def ocsf() -> OcsfValidator:
    return OcsfValidator(compile_schema())


@pytest.fixture(scope="module")
def finding() -> dict:
    return to_detection_finding(pause_event())


def test_compiled_class_is_detection_finding(ocsf):
    cls = ocsf.classes[CLASS]
    assert cls["uid"] == 2004
    assert ocsf.schema["version"] == "1.8.0"


@pytest.mark.parametrize("name", sorted(all_findings()))
def test_findings_are_valid_ocsf(ocsf, name):
    finding = to_detection_finding(all_findings()[name])
    finding = json.loads(json.dumps(finding, allow_nan=False))  # as it goes on the wire
    assert ocsf.validate(finding, CLASS) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda f: f.pop("finding_info"), "finding_info: required"),
        (lambda f: f["finding_info"].pop("uid"), "finding_info.uid: required"),
        (lambda f: f["metadata"].pop("version"), "metadata.version: required"),
        (lambda f: f["metadata"]["product"].clear(), "needs at least one of"),
        (lambda f: f.pop("severity_id"), "severity_id: required"),
        (lambda f: f.update(severity_id=7), "severity_id: 7 is not one of"),
        (lambda f: f.update(severity="Fatal"), "does not match the caption"),
        (lambda f: f.update(time="2026-11-20T14:03:41Z"), "time: '2026"),
        (lambda f: f.update(is_alert="yes"), "is_alert"),
        (lambda f: f.update(type_uid=200402), "type_uid"),
        (lambda f: f["anomaly_analyses"][0]["anomalies"][0].pop("observations"),
         "anomalies[0].observations: required"),
        (lambda f: f["anomaly_analyses"][0]["anomalies"][0]["observations"][0].update(value=8000),
         "is not a string_t"),
        (lambda f: f["resources"][0].update(colour="red"), "not an attribute"),
        (lambda f: f["metadata"].update(profiles=[]), "belongs to profile 'security_control'"),
        (lambda f: f["metadata"].update(profiles=["security_control", "cloud"]),
         "cloud: required"),
        (lambda f: f.pop("remediation") and f.update(remediation={}), "remediation.desc"),
    ],
)
def test_validator_catches_broken_findings(ocsf, finding, mutate, needle):
    broken = copy.deepcopy(finding)
    assert ocsf.validate(broken, CLASS) == []
    mutate(broken)
    errors = ocsf.validate(broken, CLASS)
    assert any(needle in e for e in errors), errors


def test_finding_uid_is_deterministic_and_is_the_native_event_id():
    a, b = to_detection_finding(pause_event()), to_detection_finding(pause_event())
    assert a == b  # same input, same finding, byte for byte
    assert a["finding_info"]["uid"] == pause_event()["event_id"]
    other = to_detection_finding(pause_event(sync_id="okta-prod:other"))
    assert other["finding_info"]["uid"] != a["finding_info"]["uid"]
    # A replay at another time is the same finding (SOAR de-duplicates) but another event.
    replay = to_detection_finding(pause_event(replay=True, scored_at="2027-01-01T00:00:00Z"))
    assert replay["finding_info"]["uid"] == a["finding_info"]["uid"]
    assert replay["metadata"]["uid"] != a["metadata"]["uid"]
    assert replay["metadata"]["labels"] == ["replay"]


def test_class_activity_and_severity(finding):
    assert (finding["class_uid"], finding["category_uid"], finding["activity_id"],
            finding["type_uid"]) == (2004, 2, 1, 200401)
    assert finding["metadata"]["version"] == "1.8.0"
    assert (finding["severity_id"], finding["severity"]) == (4, "High")
    assert finding["time"] == 1795183421000  # 2026-11-20T14:03:41Z in ms
    assert finding["is_alert"] is True
    assert finding["resources"][0]["uid"] == "okta-prod"


def test_reasons_go_to_anomaly_analyses_in_order(finding):
    analysis = finding["anomaly_analyses"][0]
    assert analysis["analysis_targets"] == [{"name": "okta-prod", "type": "Identity Connector"}]
    anomalies, baselines = analysis["anomalies"], analysis["baselines"]
    assert [a["observation_parameter"] for a in anomalies] == [
        "user.count_change", "user.removed_rate"]
    assert anomalies[0]["observations"] == [{"value": "8000"}]
    assert anomalies[0]["observed_pattern"] == "BELOW_EXPECTED_RANGE"
    assert anomalies[1]["observed_pattern"] == "ABOVE_EXPECTED_RANGE"
    assert baselines[0]["observations"] == [{"value": "18400"}]
    assert baselines[0]["observed_pattern"] == "RANGE [18300, 18500]"
    assert "distance 41.2" in finding["finding_info"]["desc"]


def test_rule_hits_lead_the_finding():
    from event_samples import rule_pause_event

    finding = to_detection_finding(rule_pause_event())
    assert finding["finding_info"]["analytic"]["uid"] == "syncguard.rule.auth_failure"
    assert finding["finding_info"]["title"].endswith("sync failed with error_class 'auth'")
    rules = finding["anomaly_analyses"][-1]["anomalies"]
    assert [r["observation_parameter"] for r in rules] == ["rule.auth_failure",
                                                          "rule.count_to_zero"]
    assert "API credentials" in finding["remediation"]["desc"]
    assert finding["risk_score"] >= 90 and finding["risk_level"] == "Critical"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_has_its_own_remediation_hint(rule):
    """A hint per rule the detector can raise (keys are the rule names, not aliases)."""
    from event_samples import rule_pause_event

    generic = to_detection_finding(rule_pause_event() | {"rule_hits": []})["remediation"]["desc"]
    event = rule_pause_event() | {"rule_hits": [{"rule": rule, "detail": "seen"}]}
    text = to_detection_finding(event)["remediation"]["desc"]
    assert len(text) > len(generic) and text != generic


def test_remediation_tells_the_operator_what_to_do(finding):
    text = finding["remediation"]["desc"]
    assert "Hold propagation" in text and "removals" in text
    assert "`syncguard resume okta-prod --by <you> --reason" in text
    assert "--false-positive`" in text
    assert "`syncguard label okta-prod:2026-11-20T14:00:07Z fault`" in text


def test_review_is_not_an_alert_and_cold_start_lowers_confidence():
    finding = to_detection_finding(review_event())
    assert finding["is_alert"] is False
    assert finding["confidence_id"] == 2
    assert "resume" not in finding["remediation"]["desc"]
    assert "pooled" in finding["finding_info"]["analytic"]["name"]


def test_stale_and_invalid_record_findings():
    stale = to_detection_finding(stale_event())
    assert stale["finding_info"]["title"] == (
        "Connector aws-iam-prod is stale: no sync for 6h (expected every 1h)")
    assert stale["anomaly_analyses"][0]["anomalies"][0]["observations"] == [{"value": "21600"}]
    from event_samples import invalid_event

    bad = to_detection_finding(invalid_event())
    assert "resources.user.count" in bad["finding_info"]["title"]
    assert bad["anomaly_analyses"][0]["anomalies"][0]["observation_parameter"] == (
        "resources.user.count")


def test_proceed_is_not_a_finding():
    assert not is_finding(proceed_event())
    with pytest.raises(ValueError, match="only pause and review"):
        to_detection_finding(proceed_event())


def test_native_event_is_kept_under_unmapped(finding):
    assert finding["unmapped"]["syncguard"] == pause_event()
