"""Checks of counts and seeds passed by users: the one place that says what an integer
argument accepts (any ``numbers.Integral``, e.g. ``numpy.int64``, but never a ``bool``)."""

from __future__ import annotations

import numbers
from typing import overload


@overload
def count(name: str, value: object, *, minimum: int = 1) -> int: ...


@overload
def count(name: str, value: object, *, minimum: int = 1, optional: bool) -> int | None: ...


def count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer of at least ``minimum`` (or ``None`` when
    ``optional``); else a ``ValueError`` that names the argument, the value and its type."""
    if value is None and optional:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if int(value) >= minimum:
            return int(value)
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer of at least {minimum}"
    )
    raise ValueError(
        f"{name} must be {wanted}{' or None' if optional else ''}, got {value!r} "
        f"({type(value).__name__})."
    )


def seed(name: str, value: object, *, bits: int) -> int | None:
    """``value`` as an ``int`` if it is ``None`` or an integer in ``[0, 2**bits)``; else a
    ``ValueError`` naming the range (checked when the seed is given, not at first use)."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if 0 <= int(value) < 2**bits:
            return int(value)
    raise ValueError(
        f"{name} must be None or an integer from 0 to 2**{bits} - 1, got {value!r} "
        f"({type(value).__name__})."
    )
