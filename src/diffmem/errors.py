"""The one error type users see.

Every problem with user input (a file, a parameter, a value) raises :class:`InputError`. Library
code names the *parameter* at fault (``InputError("must be > 0, got -1", param="num")`` reads
``num: must be > 0, got -1``); the command line turns the parameter into its flag (``--num: ...``),
prints one line on stderr and exits with status 2. Errors about a file name the file itself.
"""

from __future__ import annotations

import math


class InputError(ValueError):
    """Bad user input. ``str(err)`` is one line; ``err.param`` the parameter at fault (or None)."""

    def __init__(self, message: str, *, param: str | None = None):
        self.param = param
        self.detail = " ".join(str(message).split())
        super().__init__(f"{param}: {self.detail}" if param else self.detail)


def flag_name(param: str) -> str:
    """The command-line flag of a library parameter: ``weight_decay`` -> ``--weight-decay``
    (``ema/ema_rate`` -> ``--ema/--ema-rate``)."""
    return "/".join("--" + p.replace("_", "-") for p in param.split("/"))


def check_number(param: str, value, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False):
    """``value`` as a finite int/float inside the given bounds, else InputError naming ``param``.

    NaN, ±inf and values that overflowed on parsing (``1e400``) are refused whatever the bounds;
    so are booleans (a spec's ``lr = true`` is not the number 1).
    """
    if isinstance(value, bool):
        raise InputError(f"must be a {'whole ' if integer else ''}number, got {str(value).lower()}", param=param)
    if not isinstance(value, (int, float)):
        try:
            value = float(value) if not integer else int(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"must be a {'whole ' if integer else ''}number, got {value!r}", param=param) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"must be a finite number, got {value}", param=param)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InputError(f"must be a whole number, got {value}", param=param)
        value = int(value)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise InputError(f"must be {'>' if lo_open else '>='} {lo:g}, got {value}", param=param)
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise InputError(f"must be {'<' if hi_open else '<='} {hi:g}, got {value}", param=param)
    return value
