"""One bad input of a bad-input suite (``tests/*/test_bad_input.py``)."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[], object]
    error: type[Exception]
    #: A regular expression the message must match: it names the problem and the fix.
    message: str
