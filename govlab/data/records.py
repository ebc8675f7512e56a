"""The schema of a training record: one line of an imagefolder's ``metadata.jsonl``, as the synthetic
world writes it, the dataset loader validates it and the provenance index keys its rows by it
(``source_id``; ``categories`` pick the routing bands).

Required: ``file_name`` (relative to the folder), ``caption``, ``source_id`` (the rights holder or
origin), ``categories`` (a subset of ``CATEGORIES``), ``license``, ``opt_out``. Optional:
``duplicate_group`` (a known duplicate group; null, left out or -1: none). Other fields are kept.
"""

from __future__ import annotations

from pathlib import Path

from govlab.errors import GovlabError

CATEGORIES = ("style", "composition", "semantics", "identity", "watermark")
REQUIRED = {"file_name": str, "caption": str, "source_id": str, "categories": list,
            "license": str, "opt_out": bool}
# optional fields: JSON's forms of "none" (null, or the field left out) -> the one form used inside
OPTIONAL_INT = {"duplicate_group": -1}  # a planted/known duplicate group; -1: none


def validate_record(rec: object, where: str) -> dict:
    """Check one metadata record; raise a GovlabError naming ``where`` and the field."""
    if not isinstance(rec, dict):
        raise GovlabError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for field, typ in REQUIRED.items():
        if field not in rec:
            raise GovlabError(f"{where}: missing required field '{field}'")
        if not isinstance(rec[field], typ):
            raise GovlabError(f"{where}: field '{field}' must be {typ.__name__}, "
                              f"got {type(rec[field]).__name__} ({rec[field]!r})")
    for name, none in OPTIONAL_INT.items():  # normalised once here: no command compares None with a number
        value = rec.get(name)
        if value is None:
            rec[name] = none
        elif not isinstance(value, int) or isinstance(value, bool) or value < none:
            raise GovlabError(f"{where}: field '{name}' must be an integer >= 0, null or left out, "
                              f"got {value!r}")
    unknown = [c for c in rec["categories"] if c not in CATEGORIES]
    if unknown:
        raise GovlabError(f"{where}: unknown category {unknown[0]!r} (known: {', '.join(CATEGORIES)})")
    name = rec["file_name"]
    if Path(name).is_absolute() or ".." in Path(name).parts or name.startswith(("/", "\\")):
        raise GovlabError(f"{where}: file_name {name!r} escapes the dataset folder")
    return rec
