"""diffmem: measure, explain and control memorization in diffusion models.

A notebook session::

    import diffmem
    digits = diffmem.load_source("digits")                      # ImageSet: uint8 (N, 1, 8, 8), labels
    train_set = diffmem.class_balanced_subset(digits, 16)        # the first 16/10 of each class (nested)
    config = diffmem.TrainConfig(preset="tiny", channels=16, precond="edm", epochs=300, batch=16, lr=2e-3)
    diffmem.train(config, train_set, "run16")                   # a run folder: snapshots, stats, state
    D = diffmem.load_run("run16").denoiser                      # D(x, sigma, labels), shape (1, 8, 8)
    x = diffmem.sample(D, 200, seed=0)                          # float32 (200, 1, 8, 8) in [-1, 1]
    result = diffmem.memorization(train_set, x)                  # ratio, ci95, per-sample d1/d2/idx

Images live in model space ``uint8 / 127.5 - 1``. A denoiser is any callable
``D(x, sigma, labels=None) -> x̂`` that also states its ``shape``, ``num_classes`` and noise range
(:class:`Denoiser`); trained networks and the closed-form :class:`OptimalDenoiser` both are one, so
every sampler and metric works on both.

Names are imported on first use, so ``import diffmem`` stays light.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

_EXPORTS = {
    # errors
    "InputError": "diffmem.errors",
    # data
    "ImageSet": "diffmem.data", "load_image_set": "diffmem.data", "load_source": "diffmem.data",
    "SOURCES": "diffmem.data", "class_balanced_subset": "diffmem.data", "class_balanced_indices": "diffmem.data",
    "assign_labels": "diffmem.data", "conditioning_labels": "diffmem.data", "parse_labels": "diffmem.data", "take": "diffmem.data", "resize": "diffmem.data", "select_classes": "diffmem.data",
    "gaussian_mixture": "diffmem.data", "to_uint8": "diffmem.data", "write_dataset_zip": "diffmem.data",
    "save_npz": "diffmem.data", "write_png_folder": "diffmem.data",
    # denoisers
    "Denoiser": "diffmem.denoisers.protocol", "denoiser_from_function": "diffmem.denoisers.protocol",
    "OptimalDenoiser": "diffmem.denoisers.optimal", "build_network": "diffmem.denoisers.networks",
    "PRESETS": "diffmem.denoisers.networks", "build_denoiser": "diffmem.denoisers.build",
    "EDMPrecond": "diffmem.denoisers.precond", "VPPrecond": "diffmem.denoisers.precond",
    "load_run": "diffmem.runs", "LoadedRun": "diffmem.runs",
    # sampling
    "sample": "diffmem.sampling", "heun": "diffmem.sampling", "euler": "diffmem.sampling",
    "stochastic": "diffmem.sampling", "time_steps": "diffmem.sampling",
    # measuring
    "memorization": "diffmem.metrics.memorization", "MemorizationResult": "diffmem.metrics.memorization",
    "knn": "diffmem.metrics.neighbors", "neighbor_grid": "diffmem.plots",
    # audit criteria: feature space (DCR), extraction (Carlini et al.), data copying and authenticity
    "feature_memorization": "diffmem.metrics.memorization",
    "FeatureMemorizationResult": "diffmem.metrics.memorization", "extraction": "diffmem.metrics.extraction",
    "ExtractionResult": "diffmem.metrics.extraction", "most_copied_figure": "diffmem.metrics.extraction",
    "data_copying": "diffmem.metrics.copying", "DataCopyingResult": "diffmem.metrics.copying",
    "authenticity": "diffmem.metrics.copying", "AuthenticityResult": "diffmem.metrics.copying",
    # training
    "TrainConfig": "diffmem.config", "RunPlan": "diffmem.config", "plan_run": "diffmem.config",
    "train": "diffmem.training", "dry_run": "diffmem.training", "TrainingDiverged": "diffmem.training",
    # EMM, sweeps, reports
    "DataSpec": "diffmem.data.spec", "make_dataset": "diffmem.data.spec", "emm": "diffmem.studies.sweep",
    "estimate_emm": "diffmem.studies.emm", "SizePoint": "diffmem.studies.emm", "EMMSettings": "diffmem.studies.specs",
    "parse_spec": "diffmem.studies.specs", "run_sweep": "diffmem.studies.sweep", "make_report": "diffmem.studies.report",
    "run_demo": "diffmem.studies.demo", "StudyResult": "diffmem.studies.result", "Engine": "diffmem.studies.engines",
    # intra-class diversity: DataSpec(blend="SOURCE:α", blend_class=K)
    "blend_images": "diffmem.data.blend", "parse_blend": "diffmem.data.blend",
    "replaced_positions": "diffmem.data.blend", "blend_counts": "diffmem.data.spec",
    # point clouds, the memorized fraction on points, regularized optima (seed 002)
    "PointCloud": "diffmem.data.points", "make_points": "diffmem.data.points", "load_data": "diffmem.data.points",
    "save_points": "diffmem.data.points", "proximity": "diffmem.metrics.proximity",
    "ProximityResult": "diffmem.metrics.proximity", "run_regularization": "diffmem.studies.regularization",
    "RegularizationSettings": "diffmem.studies.regularization",
    # the random-features model of seed 003
    "RandomFeatureScore": "diffmem.denoisers.random_features", "dsm_loss": "diffmem.denoisers.random_features",
    "RFSettings": "diffmem.studies.rf", "parse_rf_spec": "diffmem.studies.rf", "run_rf_study": "diffmem.studies.rf",
    "onset_time": "diffmem.studies.rf",
    # sample quality (FD in an offline feature space, held-out loss gap)
    "load_features": "diffmem.metrics.features", "parse_features": "diffmem.metrics.features",
    "FeatureExtractor": "diffmem.metrics.features", "frechet_distance": "diffmem.metrics.quality",
    "gaussian_frechet": "diffmem.metrics.quality", "sample_quality": "diffmem.metrics.quality",
    "loss_gap": "diffmem.metrics.quality", "heldout_set": "diffmem.data.spec",
    # audit
    "audit": "diffmem.auditing.audit", "AuditResult": "diffmem.auditing.audit", "open_streamed": "diffmem.data.stream",
    "StreamedSet": "diffmem.data.stream",
    # timescales and the guard (seed 003)
    "run_timescales": "diffmem.studies.timescales", "TimescaleSettings": "diffmem.studies.timescales", "tau_gen": "diffmem.studies.timescales",
    "tau_mem": "diffmem.studies.timescales", "fit_proportional": "diffmem.studies.timescales", "select_snapshot": "diffmem.studies.guard",
    "Selection": "diffmem.studies.guard",
    # the two-split test (Kadkhodaie et al. 2024)
    "run_twosplit": "diffmem.studies.twosplit", "plan_from_spec": "diffmem.studies.twosplit", "TwoSplitSettings": "diffmem.studies.twosplit",
    "split_order": "diffmem.studies.twosplit", "pair_measures": "diffmem.studies.twosplit",
    # any model as a denoiser (diffusers, TorchScript) and membership inference
    "load_denoiser": "diffmem.runs", "load_diffusers": "diffmem.denoisers.adapters",
    "load_torchscript": "diffmem.denoisers.adapters", "save_torchscript": "diffmem.denoisers.adapters",
    "DiffusersDenoiser": "diffmem.denoisers.adapters", "TorchScriptDenoiser": "diffmem.denoisers.adapters",
    "per_image_loss": "diffmem.losses", "membership": "diffmem.metrics.membership",
    "MembershipResult": "diffmem.metrics.membership", "roc_figure": "diffmem.metrics.membership",
    "t_error": "diffmem.metrics.membership",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffmem' has no attribute {name!r}")


def __dir__():
    """The public API only: no helper module or submodule that happens to be loaded."""
    return sorted(__all__)
