"""A live progress line for ``study.optimize`` over a convexity search (tqdm)."""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any
from typing import IO

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from tqdm import tqdm

from optuna_convexity._sampler import ConvexitySampler
from optuna_convexity._summary import summarize


@dataclasses.dataclass(frozen=True)
class _Progress:
    """Where the search stands: the latest round and the best trial so far."""

    round: int
    screened: int
    n_screening: int
    promoted: int
    n_promoted: int
    n_trials: int
    best_number: int | None
    best_value: float | None
    metric: str | None

    def line(self) -> str:
        if self.best_number is None:
            best = "best -"
        else:
            metric = f"{self.metric} " if self.metric else ""
            best = f"best {metric}{self.best_value:.6g} (trial {self.best_number})"
        return (
            f"round {self.round}: screened {self.screened}/{self.n_screening}, "
            f"promoted {self.promoted}/{self.n_promoted}, {best}"
        )


def _progress(study: optuna.Study, sampler: ConvexitySampler) -> _Progress:
    summaries = summarize(study)
    latest = summaries[-1] if summaries else None
    screened = promoted = 0
    if latest is not None:
        screened = sum(1 for c in latest.candidates if c.state.is_finished())
        promoted = sum(
            1 for p in latest.promotions if p.state in (TrialState.COMPLETE, TrialState.PRUNED)
        )
    best_number: int | None = None
    best_value: float | None = None
    if not study._is_multi_objective():
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = study.best_trial
            best_number, best_value = best.number, best.value
    names = study.metric_names
    return _Progress(
        round=latest.round if latest is not None else 0,
        screened=screened,
        n_screening=sampler.n_screening,
        promoted=promoted,
        n_promoted=sampler.n_promoted,
        n_trials=len(study.get_trials(deepcopy=False)),
        best_number=best_number,
        best_value=best_value,
        metric=names[0] if names else None,
    )


class ProgressCallback:
    """Show where a convexity search stands, on one live line per worker process.

    Pass it to ``study.optimize``. After each trial it rereads the study's storage and
    rewrites one `tqdm <https://tqdm.github.io>`_ line (tqdm comes with Optuna)::

        convexity: round 1: screened 50/50, promoted 3/10, best 0.9778 (trial 52) | 113 trials

    Screened counts the latest round's finished screening trials (enqueued extras included),
    promoted its finished promotions, and the best is ``study.best_trial`` with the study's
    metric name if it has one (``study.set_metric_names``). Every worker of a study shared
    through one storage sees the whole study, so each worker's line counts every worker's
    trials. Like tqdm, it is quiet when its output is not a terminal (``disable=None``), and
    then reads nothing.

    Example:

        .. code-block:: python

            import optuna
            import optuna_convexity

            study = optuna.create_study(sampler=optuna_convexity.ConvexitySampler())
            study.optimize(
                objective, n_trials=60, callbacks=[optuna_convexity.ProgressCallback()]
            )

    Args:
        file:
            Where to write; ``sys.stderr`` by default (tqdm's default).
        position:
            The line to write on, counted from the cursor (tqdm's ``position``): give each
            worker process sharing a terminal its own, e.g. its index.
        disable:
            ``None`` (the default) is quiet unless ``file`` is a terminal; ``True`` always,
            ``False`` never.
        leave:
            Keep the line when the callback is closed (``close()``, or at exit).
    """

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        position: int | None = None,
        disable: bool | None = None,
        leave: bool = True,
    ) -> None:
        self._file = file
        self._position = position
        self._disable = disable
        self._leave = leave
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        sampler = study.sampler
        if not isinstance(sampler, ConvexitySampler):
            raise TypeError(
                "ProgressCallback shows the progress of a ConvexitySampler search; this study's "
                f"sampler is {type(sampler).__name__}. Drop the callback, or create the study "
                "with sampler=optuna_convexity.ConvexitySampler()."
            )
        with self._lock:
            if self._quiet():
                return
            progress = _progress(study, sampler)
            line = f"convexity: {progress.line()}"
            if self._bar is None:
                self._bar = tqdm(
                    desc=line,
                    initial=progress.n_trials,
                    file=self._file,
                    position=self._position,
                    disable=self._disable,
                    leave=self._leave,
                    bar_format="{desc} | {n_fmt} trials [{elapsed}]",
                    dynamic_ncols=True,
                )
            else:
                self._bar.set_description_str(line, refresh=False)
                self._bar.n = progress.n_trials
                self._bar.refresh()

    def _quiet(self) -> bool:
        """tqdm's rule: quiet if disabled, or by default if the output is not a terminal."""
        if self._disable is None:
            file = self._file if self._file is not None else sys.stderr
            return not (hasattr(file, "isatty") and file.isatty())
        return self._disable or (self._bar is not None and self._bar.disable)

    def close(self) -> None:
        """End the line (a later trial opens a new one)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_bar"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
