"""Payload formats a sink can write: which shape each native event takes on the wire.

``native``
    The native event as is.
``ocsf``
    OCSF 1.8.0 Detection Finding; ``proceed`` events are skipped (not findings).
``hec``
    Splunk HEC envelope around the native event.
``hec-ocsf``
    Splunk HEC envelope around the OCSF finding; ``proceed`` skipped.

A formatter returns ``None`` for an event the format leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from detector.errors import UsageError
from detector.events.hec import hec_native, hec_ocsf
from detector.events.native import canonical
from detector.events.ocsf import is_finding, to_detection_finding

__all__ = ["FORMATS", "Formatter", "make_formatter"]

Formatter = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]
FORMATS: tuple[str, ...] = ("native", "ocsf", "hec", "hec-ocsf")


def make_formatter(
    name: str = "native", *, host: str | None = None, index: str | None = None
) -> Formatter:
    """Return the formatter for payload format ``name``.

    Parameters
    ----------
    name : {"native", "ocsf", "hec", "hec-ocsf"}
    host, index : str, optional
        HEC ``host`` (default: this machine) and ``index`` (default: the token's).

    Raises
    ------
    UsageError
        For an unknown format name.
    """
    if name == "native":
        return canonical
    if name == "ocsf":
        return lambda e: to_detection_finding(e) if is_finding(e) else None
    if name == "hec":
        return lambda e: hec_native(canonical(e), host=host, index=index)
    if name == "hec-ocsf":
        return lambda e: (
            hec_ocsf(to_detection_finding(e), host=host, index=index) if is_finding(e) else None
        )
    raise UsageError(f"unknown event format {name!r}; choose one of {', '.join(FORMATS)}")
