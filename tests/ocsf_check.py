"""A small OCSF validator that walks the schema compiled by ocsf-lib.

It checks what the compiled class and object definitions say, not hand-written
expectations: required attributes (an attribute carrying a ``profile`` is required, and
allowed at all, only when ``metadata.profiles`` names that profile), unknown attributes,
types (through the ``types`` chain down to string/int/float/bool/json), arrays, enum
values, sibling captions, type regex/max_len/range, object ``at_least_one``/``just_one``
constraints, and ``type_uid`` / ``category_uid`` consistency.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

OCSF_SCHEMA_DIR = Path("/work/shared/ocsf-schema-1.8.0")


def compile_schema(path: Path = OCSF_SCHEMA_DIR) -> dict[str, Any]:
    """Run ``python -m ocsf.compile <path>`` and return the compiled schema."""
    done = subprocess.run(
        [sys.executable, "-m", "ocsf.compile", str(path)],
        capture_output=True, check=True, text=True, timeout=120,
    )
    return json.loads(done.stdout)


_PY_TYPES = {
    "string_t": (str,),
    "integer_t": (int,),
    "long_t": (int,),
    "float_t": (int, float),
    "boolean_t": (bool,),
}


class OcsfValidator:
    """Validate events against one compiled OCSF schema."""

    def __init__(self, compiled: dict[str, Any]) -> None:
        self.schema = compiled
        self.types = compiled["types"]
        self.objects = compiled["objects"]
        self.classes = compiled["classes"]

    def validate(self, event: dict[str, Any], class_name: str) -> list[str]:
        """Return every problem found (empty list: valid)."""
        cls = self.classes[class_name]
        errors: list[str] = []
        metadata = event.get("metadata") if isinstance(event.get("metadata"), dict) else {}
        profiles = set(metadata.get("profiles") or [])
        unknown_profiles = profiles - set(self.schema["profiles"])
        if unknown_profiles:
            errors.append(f"metadata.profiles: unknown profiles {sorted(unknown_profiles)}")
        self._object(event, cls["attributes"], cls.get("constraints"), "", profiles, errors)
        if event.get("class_uid") != cls["uid"]:
            errors.append(f"class_uid: expected {cls['uid']}, got {event.get('class_uid')!r}")
        activity = event.get("activity_id")
        if isinstance(activity, int) and event.get("type_uid") != cls["uid"] * 100 + activity:
            errors.append(f"type_uid: expected class_uid*100 + activity_id, got "
                          f"{event.get('type_uid')!r}")
        category = self.schema["categories"].get(cls.get("category"), {})
        if category and event.get("category_uid") != category.get("uid"):
            errors.append(f"category_uid: expected {category.get('uid')}")
        return errors

    # ------------------------------------------------------------------ walking

    def _object(self, value: Any, attributes: dict[str, Any], constraints: Any, path: str,
                profiles: set[str], errors: list[str]) -> None:
        if not isinstance(value, dict):
            errors.append(f"{path or '<event>'}: expected an object, got {type(value).__name__}")
            return
        for name in value:
            if name not in attributes:
                errors.append(f"{path}{name}: not an attribute of this object/class")
        for name, spec in attributes.items():
            where = f"{path}{name}"
            profile = spec.get("profile")
            if profile and profile not in profiles:
                if name in value:
                    errors.append(f"{where}: belongs to profile {profile!r}, which "
                                  "metadata.profiles does not name")
                continue
            if name not in value or value[name] is None:
                if spec.get("requirement") == "required":
                    errors.append(f"{where}: required attribute missing")
                continue
            self._attribute(value[name], spec, where, profiles, errors)
            self._sibling(value, name, spec, where, errors)
        for rule, names in (constraints or {}).items():
            present = [n for n in names if value.get(n) is not None]
            if rule == "at_least_one" and not present:
                errors.append(f"{path or '<event>'}: needs at least one of {names}")
            if rule == "just_one" and len(present) != 1:
                errors.append(f"{path or '<event>'}: needs exactly one of {names}")

    def _attribute(self, value: Any, spec: dict[str, Any], where: str, profiles: set[str],
                   errors: list[str]) -> None:
        if spec.get("is_array"):
            if not isinstance(value, list):
                errors.append(f"{where}: expected an array, got {type(value).__name__}")
                return
            for i, item in enumerate(value):
                self._single(item, spec, f"{where}[{i}]", profiles, errors)
        else:
            self._single(value, spec, where, profiles, errors)

    def _single(self, value: Any, spec: dict[str, Any], where: str, profiles: set[str],
                errors: list[str]) -> None:
        type_name = spec["type"]
        if type_name in self.types:
            self._scalar(value, type_name, where, errors)
            enum = spec.get("enum")
            if enum and str(value).lower() not in {str(k).lower() for k in enum}:
                errors.append(f"{where}: {value!r} is not one of {sorted(enum)}")
            return
        obj = self.objects.get(type_name)
        if obj is None:
            errors.append(f"{where}: unknown type {type_name!r} in the compiled schema")
            return
        if type_name == "object" and not obj["attributes"]:
            if not isinstance(value, dict):
                errors.append(f"{where}: expected an object")
            return  # the generic Object: any attributes
        self._object(value, obj["attributes"], obj.get("constraints"), f"{where}.", profiles,
                     errors)

    def _scalar(self, value: Any, type_name: str, where: str, errors: list[str]) -> None:
        chain = []
        current: str | None = type_name
        while current:
            chain.append(current)
            current = self.types[current].get("type")
        base = chain[-1]
        if base == "json_t":
            return
        allowed = _PY_TYPES.get(base)
        if allowed is None:
            errors.append(f"{where}: no rule for base type {base!r}")
            return
        if isinstance(value, bool) and base != "boolean_t" or not isinstance(value, allowed):
            errors.append(f"{where}: {value!r} is not a {type_name} ({base})")
            return
        for name in chain:
            t = self.types[name]
            if t.get("regex") and isinstance(value, str) and not re.search(t["regex"], value):
                errors.append(f"{where}: {value!r} does not match the {name} pattern")
            if t.get("max_len") and isinstance(value, str) and len(value) > t["max_len"]:
                errors.append(f"{where}: longer than {t['max_len']} ({name})")
            if t.get("range") and not t["range"][0] <= value <= t["range"][1]:
                errors.append(f"{where}: {value!r} outside {t['range']} ({name})")
            if t.get("values") and value not in t["values"]:
                errors.append(f"{where}: {value!r} not in {t['values']} ({name})")

    @staticmethod
    def _sibling(obj: dict[str, Any], name: str, spec: dict[str, Any], where: str,
                 errors: list[str]) -> None:
        """An ``*_id`` enum's caption sibling must match, unless the id is 99 (Other)."""
        sibling, enum = spec.get("sibling"), spec.get("enum")
        if not sibling or not enum or sibling not in obj or obj[name] == 99:
            return
        entry = enum.get(str(obj[name]))
        if entry and obj[sibling] != entry.get("caption"):
            errors.append(f"{where}: sibling {sibling}={obj[sibling]!r} does not match the "
                          f"caption {entry.get('caption')!r}")
