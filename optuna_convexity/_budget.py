"""Whether a ``study.optimize`` call has room for a round of the search, said once per call.

Optuna does not tell a sampler how many trials the running ``study.optimize`` call will start,
so the check reads ``n_trials`` from Optuna's own optimize loop on the thread stacks (the
thread that calls ``study.optimize`` runs it; with ``n_jobs > 1`` the trials run on other
threads). When that loop cannot be found (another Optuna version, ``study.ask()``), nothing is
said.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType
import weakref

import optuna
from optuna.study import _optimize
from optuna.study import Study


_logger = optuna.logging.get_logger(__name__)


def too_few_trials(n_trials: int, slot: int, n_screening: int, n_promoted: int) -> str | None:
    """The warning for ``study.optimize(n_trials=...)`` whose first trial screens in position
    ``slot`` of its round and whose trials end before the round can promote, or ``None``."""
    remaining = n_screening - slot
    if n_trials > remaining:
        return None
    return (
        f"study.optimize(n_trials={n_trials}) ends before this round of the search can "
        f"promote: its {n_screening} screening trials come first ({remaining} still to start), "
        f"then {n_promoted} promoted ones. Screening trials end PRUNED and only promoted trials "
        "complete, so unless other workers run the rest of the round, no trial of this call "
        "completes (and study.best_trial raises if none did before). Run "
        f"n_trials={remaining + n_promoted} or more, or give ConvexitySampler a smaller "
        "n_screening and n_promoted."
    )


class OptimizeBudget:
    """Checks each ``study.optimize`` call once, at its first trial."""

    def __init__(self) -> None:
        # A call is known by its progress bar, an object of its own that lives as long as it.
        self._checked: weakref.WeakSet[object] = weakref.WeakSet()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # Per-process bookkeeping: a copy sent to another process (a sampler pickled for DDP
        # spawn workers) starts afresh.
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]

    def check(self, study: Study, slot: int | None, n_screening: int, n_promoted: int) -> None:
        """Warn if the running ``study.optimize`` call ends before the round of its first
        trial (a screening trial in position ``slot``; ``None`` for any other) can promote."""
        call = _optimize_call(study)
        if call is None:
            return
        frame, n_trials = call
        key = frame.f_locals.get("progress_bar")
        if key is None:  # pragma: no cover - another Optuna layout
            return
        with self._lock:
            if key in self._checked:
                return
            self._checked.add(key)
        if slot is None:
            return
        message = too_few_trials(n_trials, slot, n_screening, n_promoted)
        if message is not None:
            _logger.warning(message)


def _optimize_call(study: Study) -> tuple[FrameType, int] | None:
    """Optuna's optimize loop running ``study`` on any thread, and its ``n_trials`` (``None``
    if no such loop runs or it has no ``n_trials``)."""
    code = getattr(_optimize, "_optimize", None)
    if code is None:  # pragma: no cover - another Optuna layout
        return None
    for top in list(sys._current_frames().values()):
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code is code.__code__ and frame.f_locals.get("study") is study:
                n_trials = frame.f_locals.get("n_trials")
                return (frame, n_trials) if isinstance(n_trials, int) else None
            frame = frame.f_back
    return None
