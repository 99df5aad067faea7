"""ProgressCallback: the live line of a search, drawn by tqdm."""

from __future__ import annotations

import io

import optuna
import pytest

import optuna_convexity
from optuna_convexity import _progress
from tests.search.helpers import objective


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(4, 2, seed=0, criterion="mu"),
        pruner=optuna_convexity.ConvexityPruner(),
    )


def _last_line(text: str) -> str:
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_line_after_each_trial() -> None:
    terminal = _Terminal()
    callback = optuna_convexity.ProgressCallback(file=terminal)
    study = _study()
    lines = []

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        lines.append(_last_line(terminal.getvalue()))

    study.optimize(objective, n_trials=8, callbacks=[callback, record])
    assert lines[0].startswith("convexity: round 0: screened 1/4, promoted 0/2, best - | 1 trials")
    assert lines[3].startswith("convexity: round 0: screened 4/4, promoted 0/2, best - | 4 trials")
    best = study.best_trial
    assert lines[7].startswith(
        f"convexity: round 1: screened 2/4, promoted 0/2, best {best.value:.6g} "
        f"(trial {best.number}) | 8 trials"
    )
    promoted_first = study.trials[4]
    assert lines[4].startswith(
        f"convexity: round 0: screened 4/4, promoted 1/2, best {promoted_first.value:.6g} "
        "(trial 4)"
    )
    callback.close()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_names_the_metric() -> None:
    terminal = _Terminal()
    study = _study()
    study.set_metric_names(["loss"])
    study.optimize(
        objective, n_trials=5, callbacks=[optuna_convexity.ProgressCallback(file=terminal)]
    )
    assert f"best loss {study.best_value:.6g} (trial 4)" in _last_line(terminal.getvalue())


def test_quiet_and_reads_nothing_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("read the study although nothing is shown")

    monkeypatch.setattr(_progress, "summarize", fail)
    output = io.StringIO()
    _study().optimize(
        objective, n_trials=3, callbacks=[optuna_convexity.ProgressCallback(file=output)]
    )
    assert output.getvalue() == ""


def test_refuses_another_sampler() -> None:
    study = optuna.create_study()
    with pytest.raises(TypeError, match="this study's sampler is TPESampler"):
        study.optimize(
            lambda t: t.suggest_float("x", 0, 1),
            n_trials=1,
            callbacks=[optuna_convexity.ProgressCallback(disable=True)],
        )
