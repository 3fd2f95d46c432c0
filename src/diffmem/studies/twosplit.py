"""The two-split test (Kadkhodaie et al. 2024, "Generalization in diffusion models arises from
geometry-adaptive harmonic representations", ICLR 2024): train two models on disjoint halves of
``2n`` images, sample both from the same initial noise, and watch, as ``n`` grows, the two models
stop copying their own halves and start producing the same image from the same noise.

The halves (:func:`split_order`): the source's images are grouped by class (one group for an
unlabeled source); each group is shuffled by a seeded permutation (``split_seed``) and dealt
alternately to half A and half B; each half's sequence then takes its classes in turn (round
robin). The half of size ``n`` is the first ``n`` images of its sequence, so the halves are
disjoint, nested as ``n`` grows, and class-balanced as far as the classes allow.

Measures per ``n`` (:func:`pair_measures`), on the samples as saved (uint8, as a PNG holds them),
in model space ``y = uint8 / 127.5 - 1``, ``d = C·H·W``; ``x_A(i), x_B(i)`` start from the same
latent (``sample``'s stream ``(sample_seed, i)``):

- ``cos_ab``: cosine similarity of the pair, ``⟨x_A - μ, x_B - μ⟩ / (‖x_A - μ‖·‖x_B - μ‖)`` with
  ``μ`` the mean image of the source, so the shared background does not count as agreement
  (``cos_ab_raw``: the same with ``μ = 0``, the paper's plain cosine on the images);
- ``rms_ab = ‖x_A - x_B‖ / √d``;
- ``cos_own``: cosine (centred likewise) between a sample and its nearest (L2) image of its own
  half; ``rms_own`` / ``rms_other``: distance to the nearest image of its own / the other half, / √d;
- ``mem_own`` / ``mem_other``: the memorization ratio ``‖x - NN₁‖ / ‖x - NN₂‖ < 1/3`` (Yoon et
  al. 2023) against its own / the other half;
- ``pair_closer``: fraction of pairs with ``‖x_A - x_B‖ < min(d(x_A, A∪B), d(x_B, A∪B))``: the two
  models agree more closely than either sample is to any training image.

Columns ending in ``_a`` / ``_b`` are one model's; without the suffix, the mean of both.

Output folder (``run_twosplit``): ``twosplit.json`` (the spec as run), ``n-000016/a`` and ``/b``
(run folders), ``n-000016/samples-a.npz`` (uint8 samples), ``results.json`` / ``results.csv``
(one row per n), ``similarity.png``, ``distance.png``, ``pairs.png``. Re-running skips finished
runs and drawn samples (a folder holding another spec's two-split is refused).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from diffmem.atomic import prepare_output, write_json, write_npz
from diffmem.config import TrainConfig
from diffmem.data.imageset import ImageSet, to_uint8
from diffmem.data.spec import DataSpec, make_dataset
from diffmem.errors import InputError, check_number
from diffmem.studies.folders import claim_folder
from diffmem.rng import PERMUTATION, check_seed, numpy_rng
from diffmem.studies.specs import mode_settings
from diffmem.studies.sweep import train_dataset, write_table

SPEC_FILE = "twosplit.json"
SPLIT_KEY = 2**40  # key of the split's draws in the PERMUTATION stream (training uses keys = epochs)
FIGURES = ("similarity.png", "distance.png", "pairs.png")


@dataclass(frozen=True)
class TwoSplitSettings:
    """The ``[twosplit]`` table: half sizes ``n``, how the halves are drawn, how both are sampled."""

    sizes: tuple[int, ...] = ()  # images per half (each ≥ 2)
    samples: int = 200  # samples per model (the same latents for both)
    sample_seed: int = 0
    sampler: str = "heun"
    sample_steps: int = 18
    split_seed: int = 0
    clip_batch: bool = True  # batch = min(batch, n)
    same_init: bool = False  # model B starts from the same weights as A (else seed + 1)

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if not isinstance(self.sizes, (list, tuple)) or not self.sizes:
            raise InputError("give a list of half sizes, e.g. [4, 16, 64]", param="sizes")
        sizes = [check_number("sizes", s, lo=2, integer=True) for s in self.sizes]
        if len(set(sizes)) != len(sizes):
            raise InputError(f"duplicate size in {sizes}", param="sizes")
        fix("sizes", tuple(sorted(sizes)))
        fix("samples", check_number("samples", self.samples, lo=1, hi=10**6, integer=True))
        fix("sample_steps", check_number("sample_steps", self.sample_steps, lo=1, hi=10_000, integer=True))
        fix("sample_seed", check_seed(self.sample_seed, "sample_seed"))
        fix("split_seed", check_seed(self.split_seed, "split_seed"))
        if self.sampler not in ("heun", "euler"):
            raise InputError(f"expected heun or euler (deterministic: same noise, same path), got {self.sampler!r}",
                             param="sampler")
        for name in ("clip_batch", "same_init"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"must be true or false, got {getattr(self, name)!r}", param=name)


@dataclass(frozen=True)
class TwoSplitPlan:
    """A validated two-split experiment: the data recipe, the training config, the settings."""

    path: str
    name: str
    data: DataSpec
    train: TrainConfig
    settings: TwoSplitSettings


def plan_from_spec(spec) -> TwoSplitPlan:
    """A :class:`~diffmem.studies.specs.Spec` in mode ``twosplit`` → a plan; errors name the spec key."""
    where = spec.path
    if spec.mode != "twosplit":
        raise InputError(f"{where}: mode: the two-split test needs mode = \"twosplit\", got {spec.mode!r}")
    if spec.axes:
        raise InputError(f"{where}: [axes] {next(iter(spec.axes)).split('.', 1)[1]}: the two-split test runs one "
                         "configuration; the sizes go in [twosplit] sizes")
    if spec.data.get("size") is not None:
        raise InputError(f"{where}: [data] size: the halves come from the whole source; give [twosplit] sizes")
    if spec.data.get("labels", "none") not in ("none", None):
        raise InputError(f"{where}: [data] labels: the two-split test trains unconditional models; "
                         f"use labels = \"none\", not {spec.data['labels']!r}")
    settings = mode_settings(spec, TwoSplitSettings, where)
    cell = spec.cells()[0]
    return TwoSplitPlan(where, spec.name, cell.data.replace(labels="none"), cell.train, settings)


# ---------------------------------------------------------------------------------------------
# The halves.


def split_order(labels: np.ndarray | None, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sequences into a set of ``count`` images (see the module docstring).

    ``labels`` (count,) class per image, or None (one class). Returns (seq_A, seq_B), int64, of
    lengths ⌈·⌉ and ⌊·⌋ of each class's half; the half of size n is ``seq[:n]``.
    """
    labels = np.zeros(count, dtype=np.int64) if labels is None else np.asarray(labels)
    dealt = ([], [])
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[numpy_rng(seed, PERMUTATION, SPLIT_KEY, int(c)).permutation(len(members))]
        dealt[0].append(members[0::2])  # positions 0, 2, 4, ... of the shuffled class → A
        dealt[1].append(members[1::2])  # positions 1, 3, 5, ... → B
    return _round_robin(dealt[0]), _round_robin(dealt[1])


def _round_robin(groups: list[np.ndarray]) -> np.ndarray:
    """The first of each group, then the second of each, ... (groups that run out drop out)."""
    rounds = max((len(g) for g in groups), default=0)
    return np.array([g[r] for r in range(rounds) for g in groups if r < len(g)], dtype=np.int64)


def make_pool(data: DataSpec, seed: int = 0) -> tuple[ImageSet, np.ndarray, np.ndarray]:
    """The source's images (no labels: both models are unconditional) and the two sequences."""
    pool = make_dataset(data.replace(labels=None))  # true labels where the source has them: the strata
    seq_a, seq_b = split_order(pool.labels, len(pool), seed)
    return ImageSet(pool.images, None, source=pool.source), seq_a, seq_b


def halves(pool: ImageSet, seq_a: np.ndarray, seq_b: np.ndarray, n: int) -> tuple[ImageSet, ImageSet]:
    """Half A and half B of size ``n`` (InputError naming ``sizes`` when a half cannot hold n)."""
    most = min(len(seq_a), len(seq_b))
    if n > most:
        raise InputError(f"{n} is more than a half can hold ({most} of the {len(pool)} images)", param="sizes")
    return (ImageSet(pool.images[seq_a[:n]], None, source=f"{pool.source}[half A, n={n}]"),
            ImageSet(pool.images[seq_b[:n]], None, source=f"{pool.source}[half B, n={n}]"))


# ---------------------------------------------------------------------------------------------
# The measures.


def cosine(u: np.ndarray, v: np.ndarray, center: np.ndarray | float = 0.0) -> np.ndarray:
    """Row-wise cosine similarity ``⟨u - μ, v - μ⟩ / (‖u - μ‖‖v - μ‖)`` of (M, ...) arrays; (M,)
    float64 (0 where a row equals μ)."""
    a = (np.asarray(u, dtype=np.float64) - center).reshape(len(u), -1)
    b = (np.asarray(v, dtype=np.float64) - center).reshape(len(v), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(1), norms, out=np.zeros(len(a)), where=norms > 0)


def model_space(x) -> np.ndarray:
    """uint8 pixels → float64 model space ``x / 127.5 - 1``; floats are taken as model space."""
    x = np.asarray(x)
    return x / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float64)


def pair_measures(x_a, x_b, train_a, train_b, center) -> dict:
    """The measures of the module docstring for one n: paired samples ``x_a``, ``x_b`` (M, C, H, W),
    the halves ``train_a``, ``train_b`` (n, C, H, W) (uint8 or model space), ``center`` (C, H, W)
    in model space. Distances are RMS per value in model space (one grey level = 1/127.5)."""
    from diffmem.metrics.memorization import memorization

    xa, xb, ta, tb = (model_space(v) for v in (x_a, x_b, train_a, train_b))
    d = math.prod(xa.shape[1:])
    own_a, other_a = memorization(ta, xa, bootstrap=0), memorization(tb, xa, bootstrap=0)
    own_b, other_b = memorization(tb, xb, bootstrap=0), memorization(ta, xb, bootstrap=0)
    gap = np.linalg.norm((xa - xb).reshape(len(xa), -1), axis=1)
    nearest_any = np.minimum(np.minimum(own_a.d1, other_a.d1), np.minimum(own_b.d1, other_b.d1))
    row = dict(cos_ab=float(cosine(xa, xb, center).mean()), cos_ab_median=float(np.median(cosine(xa, xb, center))),
               cos_ab_raw=float(cosine(xa, xb).mean()), rms_ab=float((gap / math.sqrt(d)).mean()),
               pair_closer=float((gap < nearest_any).mean()))
    for side, x, own, other, train in (("a", xa, own_a, other_a, ta), ("b", xb, own_b, other_b, tb)):
        row.update({f"cos_own_{side}": float(cosine(x, train[own.idx1], center).mean()),
                    f"rms_own_{side}": float(own.d1.mean() / math.sqrt(d)),
                    f"rms_other_{side}": float(other.d1.mean() / math.sqrt(d)),
                    f"mem_own_{side}": own.ratio, f"mem_other_{side}": other.ratio})
    for key in ("cos_own", "rms_own", "rms_other", "mem_own", "mem_other"):
        row[key] = (row[f"{key}_a"] + row[f"{key}_b"]) / 2
    return row


# ---------------------------------------------------------------------------------------------
# One model: train (resumably) and sample (jobs run in worker processes: module-level functions).


def n_folder(out: Path, n: int) -> Path:
    return Path(out) / f"n-{n:06d}"


def half_config(plan: TwoSplitPlan, n: int, side: str) -> TrainConfig:
    """The training config of half ``side`` at size ``n`` (batch ≤ n; B's seed + 1 unless same_init)."""
    config = plan.train
    if plan.settings.clip_batch and config.batch > n:
        config = config.replace(batch=n)
    if side == "b" and not plan.settings.same_init:
        config = config.replace(seed=config.seed + 1)
    return config


def job_half(config: TrainConfig, images: ImageSet, folder: str, samples_path: str, settings: TwoSplitSettings) -> str:
    """Train one half's model (or find it) and draw its samples (or find them); returns the path."""
    from diffmem.runs import load_run
    from diffmem.sampling import sample

    if Path(samples_path).exists():
        return samples_path
    train_dataset(config, images, Path(folder))  # or find it finished, or resume it
    x = sample(load_run(folder).denoiser, settings.samples, sampler=settings.sampler, steps=settings.sample_steps,
               seed=settings.sample_seed)
    write_npz(samples_path, images=to_uint8(x.numpy()))
    return samples_path


# ---------------------------------------------------------------------------------------------
# The driver.


@dataclass
class TwoSplitResult:
    out: Path
    rows: list[dict]  # one per finished n, ascending


def twosplit_difference(stored: dict, plan: TwoSplitPlan) -> str | None:
    """The first difference between the two-split recorded in ``stored`` (its twosplit.json) and
    ``plan`` (None: the same; the sizes may differ; fields added to the package since, at their
    defaults, are no difference)."""
    known = lambda cls, values: {f.name: values[f.name] for f in fields(cls) if f.name in values}  # noqa: E731
    old_settings = TwoSplitSettings(**{**known(TwoSplitSettings, stored["settings"]), "sizes": plan.settings.sizes})
    changed = [f"[train] {k}" for k in plan.train.differences(TrainConfig.from_dict(stored["train"]))]
    changed += [f"[data] {f.name}" for f in fields(DataSpec)
                if getattr(DataSpec(**known(DataSpec, stored["data"])), f.name) != getattr(plan.data, f.name)]
    changed += [f"[twosplit] {f.name}" for f in fields(TwoSplitSettings)
                if getattr(old_settings, f.name) != getattr(plan.settings, f.name)]
    return f"a two-split run with another {changed[0]}" if changed else None


def _check_halves(plan: TwoSplitPlan, pairs: dict) -> None:
    """Every half's training (plan, network) checked before the first write."""
    from diffmem.studies.specs import check_training

    for n, both in pairs.items():
        for side, half in zip("ab", both):
            try:
                check_training(half_config(plan, n, side), half)
            except InputError as err:
                section = "data" if err.param in {f.name for f in fields(DataSpec)} else "train"
                raise InputError(f"{plan.path}: [{section}] {err.param}: {err.detail} (at n={n})") from None


def run_twosplit(plan: TwoSplitPlan, out, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
                 progress: bool = False) -> TwoSplitResult:
    """Train the 2 × |sizes| models of ``plan`` on ``workers`` processes, sample each pair from the
    same latents, measure every n, write the table and figures into ``out``; see the module docstring."""
    from diffmem.studies.engines import as_engine

    out = Path(out)
    settings = plan.settings
    record = dict(spec=plan.path, name=plan.name, data=plan.data.to_dict(), train=plan.train.to_dict(),
                  settings={**asdict(settings), "sizes": list(settings.sizes)})
    claim_folder(out, SPEC_FILE, lambda stored: twosplit_difference(stored, plan))
    pool, seq_a, seq_b = make_pool(plan.data, settings.split_seed)
    center = model_space(pool.images).mean(0)  # μ of the centred cosines: the source's mean image (C, H, W)
    try:  # a size too large is refused before any work
        pairs = {n: halves(pool, seq_a, seq_b, n) for n in settings.sizes}
    except InputError as err:
        raise InputError(f"{plan.path}: [twosplit] sizes: {err.detail}") from None
    _check_halves(plan, pairs)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SPEC_FILE, record)
    jobs = [(f"n={n}/{side}", job_half, (half_config(plan, n, side), half, str(n_folder(out, n) / side),
                                         str(n_folder(out, n) / f"samples-{side}.npz"), settings))
            for n, both in pairs.items() for side, half in zip("ab", both)]
    done, measured = set(), {}
    for key, _ in as_engine(engine).run(jobs, workers=workers, threads=threads, out=out, progress=progress):
        done.add(key)
        n = int(key[2:].split("/")[0])
        if {f"n={n}/a", f"n={n}/b"} <= done and log is not None:
            row = measured[n] = measure_n(out, n, *pairs[n], center)
            log(f"n = {n}: cos(A, B) {row['cos_ab']:.3f}, cos to own nearest {row['cos_own']:.3f}, "
                f"memorized (own half) {row['mem_own']:.3f}, pairs closer than any training image {row['pair_closer']:.3f}")
    rows = [measured[n] if n in measured else measure_n(out, n, *pairs[n], center) for n in settings.sizes]
    write_table(out, rows)
    write_figures(out, rows, pairs)
    return TwoSplitResult(out, rows)


def measure_n(out: Path, n: int, half_a: ImageSet, half_b: ImageSet, center: np.ndarray) -> dict:
    """The row of size ``n`` from its saved samples (:func:`pair_measures`)."""
    x_a, x_b = (np.load(n_folder(out, n) / f"samples-{side}.npz")["images"] for side in "ab")
    return {"n": n, "samples": len(x_a), **pair_measures(x_a, x_b, half_a.images, half_b.images, center),
            "wall_time_s": _wall_time(n_folder(out, n))}


def _wall_time(folder: Path) -> float | None:
    times = [json.loads(p.read_text())["seconds"] for p in (folder / s / "wall_time.json" for s in "ab") if p.exists()]
    return round(sum(times), 1) if times else None


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects, as diffmem.plots).


def curves_figure(rows: list[dict], series: dict, ylabel: str, title: str):
    """Lines ``{label: column}`` of ``rows`` against n (log axis); a Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    n = [r["n"] for r in rows]
    for label, column in series.items():
        ax.plot(n, [r[column] for r in rows], "o-", ms=3.5, label=label)
    ax.set_xscale("log")
    ax.set_xticks(n, [str(v) for v in n])
    ax.minorticks_off()
    ax.set_xlabel("n (training images per half)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pairs_figure(out: Path, rows: list[dict], pairs: dict, count: int = 4):
    """For each n, ``count`` pairs: nearest image of half A | sample A | sample B | nearest of half B."""
    from matplotlib.figure import Figure

    from diffmem.metrics.neighbors import knn

    fig = Figure(figsize=(count * 4 * 0.62, len(rows) * 0.72 + 0.6))
    axes = fig.subplots(len(rows), count * 4, squeeze=False)
    for r, row in enumerate(rows):
        n = row["n"]
        x = {s: np.load(n_folder(out, n) / f"samples-{s}.npz")["images"][:count] for s in "ab"}
        near = {s: half.images[knn(x[s], half.images, k=1).index[:, 0]] for s, half in zip("ab", pairs[n])}
        for i in range(min(count, len(x["a"]))):
            for c, img in enumerate((near["a"][i], x["a"][i], x["b"][i], near["b"][i])):
                ax = axes[r, 4 * i + c]
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(("NN in A", "A", "B", "NN in B")[c], fontsize=6)
        axes[r, 0].set_ylabel(f"n={n}", fontsize=7)
    fig.suptitle("pairs from the same latent: nearest image of half A | sample A | sample B | nearest of half B",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))
    return fig


def write_figures(out: Path, rows: list[dict], pairs: dict) -> None:
    """``similarity.png``, ``distance.png`` and ``pairs.png`` in ``out``."""
    from diffmem.plots import save_figure

    save_figure(curves_figure(rows, {"cos(sample A, sample B)": "cos_ab", "cos(sample, nearest own image)": "cos_own",
                                     "pairs closer than any training image": "pair_closer",
                                     "memorized (1/3 rule, own half)": "mem_own"},
                              "similarity / fraction", "two-split test: agreement across splits"), out / FIGURES[0])
    save_figure(curves_figure(rows, {"sample A to sample B": "rms_ab", "sample to nearest own image": "rms_own",
                                     "sample to nearest image of the other half": "rms_other"},
                              "RMS distance (model space)", "two-split test: distances"), out / FIGURES[1])
    save_figure(pairs_figure(out, rows, pairs), out / FIGURES[2])


def run(spec, out=None, *, engine="local", workers: int = 1, threads: int | None = None, log=None,
        progress: bool = False):
    """The study entry shape (:class:`~diffmem.studies.result.StudyResult`) over :func:`run_twosplit`:
    ``spec`` a path or a parsed spec, ``out`` new, empty or this spec's earlier two-split (default:
    a folder named after the spec)."""
    from diffmem.studies.result import StudyResult
    from diffmem.studies.specs import Spec, parse_spec
    from diffmem.studies.sweep import TABLE_CSV

    plan = plan_from_spec(spec if isinstance(spec, Spec) else parse_spec(spec))
    folder = prepare_output(plan.name if out is None else out, kind="folder", param="out", overwrite=True, create=False)
    result = run_twosplit(plan, folder, engine=engine, workers=workers, threads=threads, log=log, progress=progress)
    return StudyResult("two-split", result.out, result.rows,
                       [f"{len(result.rows)} sizes finished; table in {result.out / TABLE_CSV}"], result)
