"""Splunk HTTP Event Collector (HEC) envelope around one event.

Splunk's ``/services/collector/event`` endpoint takes ``{"time", "host", "source",
"sourcetype", "index"?, "event"}``. ``time`` is the event's own time (not the send time),
so re-rendering the same event gives the same envelope, byte for byte, and the webhook's
idempotency key stays the same.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from detector.events.native import event_time

__all__ = [
    "SOURCE",
    "SOURCETYPE_NATIVE",
    "SOURCETYPE_OCSF",
    "hec_envelope",
    "hec_native",
    "hec_ocsf",
]

SOURCE = "syncguard"
SOURCETYPE_NATIVE = "syncguard:event"
SOURCETYPE_OCSF = "ocsf:detection_finding"


def hec_envelope(
    payload: Mapping[str, Any],
    *,
    time: float,
    sourcetype: str,
    host: str | None = None,
    source: str = SOURCE,
    index: str | None = None,
) -> dict[str, Any]:
    """Wrap ``payload`` in a HEC event envelope.

    Parameters
    ----------
    payload : mapping
        The event body (native event or OCSF finding).
    time : float
        Event time in epoch seconds (milliseconds kept as the fraction).
    sourcetype : str
        ``"syncguard:event"`` or ``"ocsf:detection_finding"``.
    host : str, optional
        Defaults to this machine's host name.
    source : str, default "syncguard"
    index : str, optional
        Splunk index; omitted so the HEC token's default index applies.

    Returns
    -------
    dict
        ``{"time", "host", "source", "sourcetype", ["index",] "event"}``.
    """
    envelope: dict[str, Any] = {
        "time": round(float(time), 3),
        "host": host or socket.gethostname(),
        "source": source,
        "sourcetype": sourcetype,
    }
    if index:
        envelope["index"] = index
    envelope["event"] = dict(payload)
    return envelope


def hec_native(
    event: Mapping[str, Any], *, host: str | None = None, index: str | None = None
) -> dict[str, Any]:
    """HEC envelope for a native event (sourcetype ``syncguard:event``)."""
    return hec_envelope(
        event, time=event_time(event).timestamp(), sourcetype=SOURCETYPE_NATIVE,
        host=host, index=index,
    )


def hec_ocsf(
    finding: Mapping[str, Any], *, host: str | None = None, index: str | None = None
) -> dict[str, Any]:
    """HEC envelope for an OCSF finding (sourcetype ``ocsf:detection_finding``)."""
    return hec_envelope(
        finding, time=finding["time"] / 1000.0, sourcetype=SOURCETYPE_OCSF,
        host=host, index=index,
    )
