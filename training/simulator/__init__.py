"""Realistic, labelled fleet simulator for identity-connector syncs.

``simulate_fleet`` returns sync records (valid against
``detector/schemas/sync-record.schema.json``) and one label per sync;
``write_fleet`` writes them as ``syncs.jsonl`` and ``labels.jsonl``.

Modules: :mod:`.kinds` (connector kinds, resource types, fields),
:mod:`.normal` (normal life), :mod:`.faults` (fault episodes and access
reviews), :mod:`.holidays` (regional lulls), :mod:`.fleet` (orchestration).
"""

from .faults import FAULT_CLASSES
from .fleet import DEFAULT_START, describe_fleet, simulate_fleet, write_fleet

__all__ = ["DEFAULT_START", "FAULT_CLASSES", "describe_fleet", "simulate_fleet", "write_fleet"]
