"""Experiment specs (TOML, read with the standard library's ``tomllib``) for ``diffmem sweep`` and
``diffmem emm``.

    name = "weight-decay"
    mode = "runs"            # one training run per cell; or "emm": an EMM over sizes per cell
    combine = "product"      # the axes' product; or "zip" (equal lengths, taken side by side)

    [data]                   # a DataSpec: source, size, resolution, labels, classes, blend, blend_class, seed, ...
    source = "digits"
    size = 64
    labels = "none"

    [train]                  # any TrainConfig field
    preset = "tiny"
    precond = "edm"
    epochs = 1000
    batch = 32
    track_every = 100

    [axes]                   # any data or train field (prefix "data." / "train." where both have it)
    weight_decay = [0.0, 1e-3, 1e-2, 1e-1]

    [emm]                    # mode = "emm" (and ``diffmem emm``): the sizes and the estimate
    epsilon = 0.1
    sizes = [8, 16, 32, 64, 128]      # a fixed grid; or strategy = "adaptive" with min_size, max_size
    clip_batch = true                 # batch = min(batch, |D|): one step is at most one epoch

Every problem is one line naming the file and the key (``spec.toml: [axes] size: empty axis``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from diffmem.config import TrainConfig
from diffmem.data.spec import DataSpec
from diffmem.errors import InputError, check_number

DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataSpec))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: Each mode and the table of mode-specific settings it reads (``None``: none). Modes other than
#: ``runs`` and ``emm`` are run by their own modules, which validate ``Spec.settings`` themselves.
MODE_SECTIONS = {"runs": None, "emm": "emm", "timescales": "timescales", "twosplit": "twosplit"}
MODE_SECTIONS["regularization"] = "regularization"  # closed-form optima (diffmem.studies.regularization)
#: Modes that train nothing: their [train] table may be left out (then ``Cell.train`` is None).
UNTRAINED_MODES = ("regularization",)
TOP_KEYS = ("name", "mode", "combine", "data", "train", "axes", *(s for s in MODE_SECTIONS.values() if s))


@dataclass(frozen=True)
class EMMSettings:
    """How an EMM is measured: the sizes (a grid, or an adaptive search's range) and ε."""

    epsilon: float = 0.1
    strategy: str = "grid"  # grid | adaptive
    sizes: tuple[int, ...] = ()  # the grid
    min_size: int | None = None  # adaptive: climb from here ...
    max_size: int | None = None  # ... up to here
    factor: float = 2.0  # adaptive: climbing factor
    resolution: float = 1.25  # adaptive: stop when the bracket's sizes differ by at most this factor
    max_samples: int = 0  # adaptive: re-measure a straddling ratio with up to this many samples
    clip_batch: bool = True  # batch = min(batch, |D|)

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        fix("epsilon", check_number("epsilon", self.epsilon, lo=0, hi=1, lo_open=True, hi_open=True))
        if self.strategy not in ("grid", "adaptive"):
            raise InputError(f"expected grid or adaptive, got {self.strategy!r}", param="strategy")
        if self.strategy == "grid":
            if not isinstance(self.sizes, (list, tuple)) or len(self.sizes) < 2:
                raise InputError("a grid needs at least two sizes", param="sizes")
            sizes = [check_number("sizes", s, lo=2, integer=True) for s in self.sizes]
            if len(set(sizes)) != len(sizes):
                raise InputError(f"duplicate size in {sizes}", param="sizes")
            fix("sizes", tuple(sorted(sizes)))
        else:
            if self.min_size is None or self.max_size is None:
                raise InputError("the adaptive strategy needs min_size and max_size", param="min_size")
            fix("min_size", check_number("min_size", self.min_size, lo=2, integer=True))
            fix("max_size", check_number("max_size", self.max_size, lo=self.min_size, lo_open=True, integer=True))
            fix("factor", check_number("factor", self.factor, lo=1, lo_open=True))
            fix("resolution", check_number("resolution", self.resolution, lo=1, lo_open=True))
            fix("max_samples", check_number("max_samples", self.max_samples, lo=0, integer=True))


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: the knob values that name it, and what it trains."""

    name: str  # its folder name, from the knob values
    knobs: dict  # axis key -> value
    data: DataSpec
    train: TrainConfig | None  # None in modes that train nothing (UNTRAINED_MODES)

    def to_dict(self) -> dict:
        return {"name": self.name, "knobs": self.knobs, "data": self.data.to_dict(),
                "train": None if self.train is None else self.train.to_dict()}


@dataclass(frozen=True)
class Spec:
    """A parsed, validated spec (see the module docstring)."""

    path: str
    name: str
    mode: str
    combine: str
    data: dict
    train: dict
    axes: dict = field(default_factory=dict)  # "data.size" / "train.lr" -> list of values
    emm: EMMSettings | None = None
    settings: dict = field(default_factory=dict)  # the mode's own table ([timescales], [twosplit], ...)

    def cells(self) -> list[Cell]:
        """Every cell, in axis order; each validated (a bad value names the spec key)."""
        keys, values = list(self.axes), list(self.axes.values())
        combos = list(itertools.product(*values)) if self.combine == "product" else list(zip(*values))
        cells, names = [], set()
        for combo in combos or [()]:
            knobs = dict(zip(keys, combo))
            data, train = dict(self.data), dict(self.train)
            for key, value in knobs.items():
                section, name = key.split(".", 1)
                (data if section == "data" else train)[name] = value
            where = ", ".join(f"{k}={v!r}" for k, v in knobs.items()) or "the base config"
            data_spec = self._build(DataSpec, data, "data", where)
            untrained = self.mode in UNTRAINED_MODES and not self.train  # then [axes] holds data fields only
            train_config = None if untrained else self._build(TrainConfig, train, "train", where)
            name = cell_name(knobs)
            if name in names:
                raise InputError(f"{self.path}: [axes] two cells are both {where} (duplicate values)")
            names.add(name)
            cells.append(Cell(name, {k.split(".", 1)[1]: v for k, v in knobs.items()}, data_spec, train_config))
        return cells

    def _build(self, cls, values: dict, section: str, where: str):
        try:
            check_types(cls, values)
            return cls(**values)
        except InputError as err:
            key = err.param or "?"
            in_axes = any(k.split(".", 1)[1] in key.split("/") for k in self.axes if k.startswith(section + "."))
            raise InputError(f"{self.path}: [{'axes' if in_axes else section}] {key}: {err.detail} (at {where})") from None


def check_cells(spec: Spec, sizes=None) -> list[Cell]:
    """The one validation pass of a spec, before anything is written or trained: every cell (at each
    of ``sizes``, the training-set sizes a mode trains the cell at; default its own) builds its
    training set, resolves its plan (duration, snapshots, schedules) and builds its network (on the
    ``meta`` device: no memory, no time). A problem is one line naming the file, table and key."""
    from diffmem.data.spec import make_dataset

    cells, datasets = spec.cells(), {}
    if sizes is None and spec.emm is not None:
        sizes = spec.emm.sizes or (spec.emm.min_size, spec.emm.max_size)
    section = "emm] sizes" if spec.emm is not None else None
    for cell in cells:
        for size in sizes or [None]:
            data = cell.data if size is None else cell.data.replace(size=size)
            where = ", ".join([f"{k}={v!r}" for k, v in cell.knobs.items()] + ([f"size={size}"] if size else [])) \
                or "the base config"
            try:
                key = json.dumps(data.to_dict(), sort_keys=True)
                if key not in datasets:
                    datasets[key] = make_dataset(data)
                if cell.train is None:
                    continue
                if spec.emm is not None and not cell.train.track_every:
                    raise InputError("EMM runs must track memorization; set track_every > 0", param="track_every")
                config = cell.train.replace(batch=min(cell.train.batch, size)) if size and spec.emm is not None \
                    and spec.emm.clip_batch else cell.train
                check_training(config, datasets[key])
            except InputError as err:
                raise _cell_error(spec, err, where, section if size else None) from None
    return cells


_BUILT: set = set()  # network recipes already built by check_training (each is built once per process)


def check_training(config, dataset) -> None:
    """What training ``config`` on ``dataset`` would refuse only after starting: an unavailable
    device, the plan (duration, snapshots, schedules, the data's shape) and the network (built on
    the ``meta`` device: no memory, no time). InputError naming the config field."""
    import torch

    from diffmem.config import plan_run
    from diffmem.denoisers.build import build_denoiser
    from diffmem.denoisers.networks import NETWORK_FIELDS

    if config.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda is not available here", param="device")
    plan = plan_run(config, dataset)
    shape = dict(resolution=plan.resolution, in_channels=plan.in_channels, num_classes=plan.num_classes, dim=plan.dim)
    key = json.dumps([{k: config.to_dict()[k] for k in NETWORK_FIELDS + ("precond", "sigma_data")}, shape], default=str)
    if key in _BUILT:
        return
    try:
        try:
            with torch.device("meta"):
                build_denoiser(config, **shape)
        except (RuntimeError, NotImplementedError) as err:  # a network whose init reads values: build it for real
            if "meta" not in str(err):
                raise
            with torch.no_grad():
                build_denoiser(config, **shape)
        _BUILT.add(key)
    except InputError:
        raise
    except (ValueError, TypeError, AssertionError, RuntimeError, KeyError, IndexError) as err:
        raise InputError(f"the network cannot be built for {'x'.join(map(str, plan.shape))} data "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:200]})", param="arch") from None


def _cell_error(spec: Spec, err: InputError, where: str, sizes_section: str | None) -> InputError:
    key = err.param or "?"
    if key == "data":
        return InputError(f"{spec.path}: [data]: {err.detail} (at {where})")
    if key == "size" and sizes_section:
        return InputError(f"{spec.path}: [{sizes_section}: {err.detail} (at {where})")
    section = "data" if key in DATA_FIELDS else "train"
    in_axes = any(k.split(".", 1)[1] in key.split("/") for k in spec.axes)
    return InputError(f"{spec.path}: [{'axes' if in_axes else section}] {key}: {err.detail} (at {where})")


def check_types(cls, values: dict) -> None:
    """TOML values have types: a string or a boolean where the dataclass ``cls`` declares neither
    (``size = "8"``, ``lr = true``, ``compile = "yes"``) is refused, naming the key, instead of
    being converted (a tuple of whole numbers may be written "1,2,2"). Lists are checked element by
    element against the declared tuple type."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        declared = types.get(key, "")
        for item in value if isinstance(value, list) and "tuple" in declared else [value]:
            if isinstance(item, bool) != declared.startswith("bool") and (isinstance(item, bool) or declared == "bool"):
                raise InputError(f"must be {_kind(declared)}, got {str(item).lower() if isinstance(item, bool) else repr(item)}",
                                 param=key)
            if isinstance(item, str) and "str" not in declared and not (declared.startswith("tuple[int") and item is value):
                raise InputError(f"must be {_kind(declared)}, got the string {item!r}", param=key)
            if isinstance(item, (list, dict)) and not isinstance(value, list) or isinstance(item, dict):
                raise InputError(f"must be {_kind(declared)}, got {type(item).__name__} {item!r}", param=key)


def _kind(declared: str) -> str:
    return "true or false" if declared.startswith("bool") else "a number" if "int" in declared or "float" in declared \
        else f"of type {declared}"


def cell_name(knobs: dict) -> str:
    """A folder name from knob values: ``weight_decay=0.01, labels='true'`` → ``weight_decay-0.01_labels-true``."""
    if not knobs:
        return "base"
    parts = []
    for key, value in knobs.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
            if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.', 1)[1]}-{re.sub(r'[^A-Za-z0-9.,:+-]', '', text.replace(':', '-'))}")
    return "_".join(parts)


def _table(doc: dict, key: str, path: str, allowed) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise InputError(f"{path}: [{key}] must be a table")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise InputError(f"{path}: [{key}] {unknown[0]}: unknown key (known: {', '.join(allowed)})")
    return dict(value)


def _axis_key(key: str, path: str) -> str:
    """``size`` → ``data.size``; ``lr`` → ``train.lr``; a name in both needs its prefix."""
    if "." in key:
        section, name = key.split(".", 1)
        if name not in {"data": DATA_FIELDS, "train": TRAIN_FIELDS}.get(section, ()):
            raise InputError(f"{path}: [axes] {key}: unknown knob")
        return key
    where = [s for s, fields in (("data", DATA_FIELDS), ("train", TRAIN_FIELDS)) if key in fields]
    if not where:
        raise InputError(f"{path}: [axes] {key}: unknown knob (data: {', '.join(DATA_FIELDS)}; train: any TrainConfig field)")
    if len(where) > 1:
        raise InputError(f"{path}: [axes] {key}: both a data and a train knob; write data.{key} or train.{key}")
    return f"{where[0]}.{key}"


def mode_settings(spec: Spec, cls, where: str | None = None):
    """The spec's mode table (``[timescales]``, ``[twosplit]``, ...) as ``cls``, a dataclass that
    validates itself; an unknown key or bad value is one line naming the file, table and key."""
    table, where = MODE_SECTIONS[spec.mode], where or spec.path
    known = tuple(f.name for f in dataclasses.fields(cls))
    unknown = [k for k in spec.settings if k not in known]
    if unknown:
        raise InputError(f"{where}: [{table}] {unknown[0]}: unknown key (known: {', '.join(known)})")
    try:
        check_types(cls, spec.settings)
        return cls(**spec.settings)
    except InputError as err:
        raise InputError(f"{where}: [{table}] {err.param}: {err.detail}") from None
    except TypeError as err:  # e.g. a table where a value belongs
        raise InputError(f"{where}: [{table}]: {err}") from None


MAX_SPEC_BYTES = 1 << 20  # a spec is a few lines of TOML; /dev/zero or a data file is not one


def read_toml(path) -> dict:
    """A spec file's TOML document; an unreadable, oversized or invalid file is one line naming it
    (at most :data:`MAX_SPEC_BYTES` are read, so ``/dev/zero`` is refused, not read forever)."""
    if not isinstance(path, (str, Path)):
        raise InputError(f"expected a spec file's path, got {type(path).__name__}", param="spec")
    path = str(path)
    if not path.strip():
        raise InputError("an empty path is not a spec file", param="spec")
    try:
        if Path(path).is_dir():
            raise InputError(f"{path}: is a folder, not a spec file")
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise InputError(f"{path}: more than {MAX_SPEC_BYTES} bytes; not a spec file")
        return tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the spec ({getattr(err, 'strerror', None) or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None


def check_name(name, path: str) -> str:
    """A spec's ``name``: the default folder and a label, never a path (no ``/``, ``..``, ``.``)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{path}: name: must be a non-empty string, got {name!r}")
    if name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name) or len(name) > 200:
        raise InputError(f"{path}: name: {name!r} is not a plain name (no slashes, '..' or control characters)")
    return name


def parse_spec(path, *, mode: str | None = None) -> Spec:
    """Read and validate a spec file; ``mode`` forces ``runs`` or ``emm`` (``diffmem emm``)."""
    doc = read_toml(path)
    path = str(path)
    unknown = [k for k in doc if k not in TOP_KEYS]
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: unknown key (known: {', '.join(TOP_KEYS)})")
    name = check_name(doc.get("name", Path(path).stem), path)
    doc_mode = doc.get("mode", "runs")
    if not isinstance(doc_mode, str) or doc_mode not in MODE_SECTIONS:
        raise InputError(f"{path}: mode: expected one of {', '.join(MODE_SECTIONS)}, got {doc_mode!r}")
    if mode is not None and "mode" in doc and doc_mode != mode:
        command = {"twosplit": "two-split", "runs": "sweep", "emm": "emm"}.get(doc_mode, doc_mode)
        raise InputError(f"{path}: mode: this spec is mode {doc_mode}, run by `diffmem {command} SPEC`")
    mode = mode or doc_mode
    combine = doc.get("combine", "product")
    if not isinstance(combine, str) or combine not in ("product", "zip"):
        raise InputError(f"{path}: combine: expected product or zip, got {combine!r}")
    axes = {}
    raw_axes = doc.get("axes", {})
    if not isinstance(raw_axes, dict):
        raise InputError(f"{path}: [axes] must be a table")
    flat = {}
    for key, values in raw_axes.items():  # TOML reads `train.lr = [...]` as a nested table
        flat.update({f"{key}.{k}": v for k, v in values.items()} if isinstance(values, dict) else {key: values})
    for key, values in flat.items():
        full = _axis_key(key, path)
        if not isinstance(values, list) or not values:
            raise InputError(f"{path}: [axes] {key}: must be a non-empty list of values")
        if full in axes:
            raise InputError(f"{path}: [axes] {key}: given twice")
        axes[full] = values
    if combine == "zip" and len({len(v) for v in axes.values()}) > 1:
        raise InputError(f"{path}: [axes] combine = \"zip\" needs axes of equal length, got "
                         f"{', '.join(f'{k.split(chr(46))[1]}: {len(v)}' for k, v in axes.items())}")
    emm = None
    if mode == "emm":
        if "data.size" in axes:
            raise InputError(f"{path}: [axes] size: in mode emm the sizes come from [emm]")
        settings = _table(doc, "emm", path, tuple(f.name for f in dataclasses.fields(EMMSettings)))
        try:
            check_types(EMMSettings, settings)
            emm = EMMSettings(**settings)
        except InputError as err:
            raise InputError(f"{path}: [emm] {err.param}: {err.detail}") from None
    section = MODE_SECTIONS[mode]
    settings = {}
    if section and mode != "emm":
        settings = doc.get(section, {})
        if not isinstance(settings, dict):
            raise InputError(f"{path}: [{section}] must be a table")
    tables = {"data": _table(doc, "data", path, DATA_FIELDS), "train": _table(doc, "train", path, TRAIN_FIELDS)}
    for section, cls in (("data", DataSpec), ("train", TrainConfig)):  # also the values an axis overrides
        try:
            check_types(cls, tables[section])
        except InputError as err:
            raise InputError(f"{path}: [{section}] {err.param}: {err.detail}") from None
    spec = Spec(path, name, mode, combine, tables["data"], tables["train"], axes, emm, settings)
    _check_base(spec, spec.cells())  # validate every cell now, before anything runs
    return spec


def _check_base(spec: Spec, cells: list[Cell]) -> None:
    """The base [data] and [train] values an axis overrides are values of the spec too: checked
    with the first cell's others."""
    for section, cls, table in (("data", DataSpec, spec.data), ("train", TrainConfig, spec.train)):
        first = getattr(cells[0], section)
        if first is not None and table:
            try:
                cls(**{**first.to_dict(), **table})
            except InputError as err:
                raise InputError(f"{spec.path}: [{section}] {err.param}: {err.detail} (overridden by [axes], "
                                 "still a value of the spec)") from None
