"""Studies: experiments built from the core (data, denoisers, sampling, metrics, training).

Specs (TOML) and engines (a local pool, Ray) drive sweeps; over them stand the EMM estimate,
timescales, the two-split test, the random-features model, regularized optima, the memorization
guard's snapshot selection, the demo, their figures and the HTML report. Import the modules
themselves (``diffmem.studies.sweep``...); the public names are in :mod:`diffmem`.
"""
