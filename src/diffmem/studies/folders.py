"""Which work an output folder holds: a folder belongs to one spec.

Every study command (``sweep``, ``emm``, ``timescales``, ``two-split``, ``regularization``) writes a
record of its spec into its output folder first (``sweep.json``, ``spec.json``, ``twosplit.json``)
and, before writing anything, :func:`claim_folder` checks that the folder is new, empty, or holds
the record of the same work (:func:`spec_difference`), so re-running a command resumes it and
anything else (another spec, another command, a run folder, a corrupt record) is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffmem.atomic import prepare_output
from diffmem.errors import InputError


def _refuse(param, message: str):
    raise InputError(message, param=param)


def claim_folder(path, marker: str, differs, *, legacy=(), param: str = "out") -> Path:
    """Check, writing nothing, that the output folder ``path`` is new, empty, or already belongs to
    this work: its ``marker`` file (JSON) is the record of the same work, i.e. ``differs(stored)``
    returns None (else a short text naming the first difference; it may raise KeyError, TypeError
    or ValueError on a record it cannot read). A folder belongs to one spec: any other folder, a
    corrupt marker, or a non-empty folder without one (unless it holds only ``legacy`` names,
    written before markers existed) is refused: InputError naming ``param``."""
    path = prepare_output(path, kind="folder", names=(), param=param, overwrite=True, create=False)
    if not path.is_dir():
        return path
    file = path / marker
    if file.is_file():
        try:
            stored = json.loads(file.read_text())
            if not isinstance(stored, dict):
                raise TypeError("not a JSON object")
            changed = differs(stored)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            _refuse(param, f"{file}: not a readable record of this kind of work ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:80]}); give a new output folder")
        if changed:
            _refuse(param, f"{path}: holds other work ({marker}: {changed}); a folder belongs to one spec: "
                           "give a new output folder")
        return path
    foreign = sorted(p.name for p in path.iterdir() if p.name not in legacy and not p.name.startswith("."))
    if foreign:
        _refuse(param, f"{path}: a non-empty folder without {marker} (it holds {foreign[0]}); "
                       "give a new or empty output folder")
    return path


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def spec_difference(stored: dict, spec, cells, tables: dict) -> str | None:
    """The first difference between the record ``stored`` and this spec (None: the same work): its
    name, each settings table (``tables``: record key -> (dataclass, the value now)), the cells'
    names, data and training configs. Runtime fields (the device) may differ; fields added to the
    package since, at their defaults, are no difference. Raises KeyError/TypeError on a record of
    another kind (then :func:`claim_folder` calls it corrupt)."""
    from diffmem.config import TrainConfig
    from diffmem.data.spec import DataSpec

    if stored["name"] != spec.name:
        return f"name {stored['name']!r} there, {spec.name!r} now"
    for key, (cls, now) in tables.items():
        if now is not None and cls(**stored[key]) != now:
            return f"other [{key}] settings"
    names = [c["name"] for c in stored["cells"]]
    if names != [c.name for c in cells]:
        return f"cells {', '.join(names)[:80]} there, {', '.join(c.name for c in cells)[:80]} now"
    for old, cell in zip(stored["cells"], cells):
        if DataSpec(**old["data"]) != cell.data:
            return f"cell {cell.name}: other [data]"
        if cell.train is not None and (changed := cell.train.differences(TrainConfig.from_dict(old["train"]))):
            return (f"cell {cell.name}: {changed[0]} = {old['train'].get(changed[0])!r} there, "
                    f"{getattr(cell.train, changed[0])!r} now")
    return None


def check_out_path(out) -> None:
    """``out``: None (a folder named after the spec) or a path."""
    if out is not None and (not isinstance(out, (str, os.PathLike)) or not str(out).strip()):
        raise InputError(f"expected an output folder path, got {out!r}", param="out")
