"""The validators of every user-facing value, with one message format:
``<name>=<value> is invalid: give <what>, e.g. <example>``. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from balsam_dask.errors import InvalidSpec


def invalid(name: str, value: Any, want: str, example: str) -> InvalidSpec:
    """The error for a bad value: what was given, what is wanted, a correct form."""
    return InvalidSpec(f"{name}={value!r} is invalid: give {want}, e.g. {example}")


def integer(name: str, value: Any, example: str, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``."""
    if type(value) is int and (minimum is None or value >= minimum):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise invalid(name, value, "an integer" if minimum is None else f"an integer >= {minimum}", example)
    return int(value)


def number(name: str, value: Any, example: str, minimum: float | None = None, *, above: float | None = None,
           what: str = "a number") -> float:  # fmt: skip
    """``value`` as a float if it is a finite number (not a bool) >= ``minimum`` / > ``above``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok:
        bound = f" >= {minimum:g}" if minimum is not None else f" > {above:g}" if above is not None else ""
        raise invalid(name, value, f"{what}{bound}", example)
    return float(value)


def seconds(name: str, value: Any, example: str, allow_zero: bool = False) -> float | None:
    """A duration in seconds (> 0, or >= 0 with ``allow_zero``); None stays None."""
    if value is None:
        return None
    if allow_zero:
        return number(name, value, example, 0, what="a number of seconds")
    return number(name, value, example, above=0, what="a number of seconds")


def text(name: str, value: Any, example: str) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise invalid(name, value, "a non-empty string", example)
    return value


def strings(name: str, value: Any, example: str) -> tuple[str, ...]:
    """``value`` as a tuple if it is a sequence of strings (not one string)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise invalid(name, value, "a list of strings", example)
    return tuple(value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise invalid(name, value, "True or False", f"{name}=True")
    return value


#: Units of an age (``"30m"``: thirty minutes ago).
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(name: str, value: Any, now: float) -> float | None:
    """A point in time as epoch seconds: a number (epoch seconds), a ``datetime``, or a string:
    an ISO time (``2026-11-23T10:00``), epoch seconds, or an age (``30m``, ``2h``, ``1d`` before
    ``now``). None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    t = value.strip() if isinstance(value, str) else ""
    if t[-1:] in AGE_UNITS and t[:-1].replace(".", "", 1).isdigit():
        return now - float(t[:-1]) * AGE_UNITS[t[-1]]
    try:
        seconds = float(t)
    except ValueError:
        try:
            seconds = datetime.fromisoformat(t).timestamp() if t else math.nan
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds):
        raise invalid(name, value, "an ISO time, epoch seconds or an age (30m, 2h, 1d ago)",
                      f"{name}='2026-11-23T10:00' or {name}='2h'")  # fmt: skip
    return seconds
