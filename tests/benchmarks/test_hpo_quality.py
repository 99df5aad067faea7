"""The search-quality benchmark: its shared training is deterministic, its quick mode runs.

No thresholds on the results: the benchmark reports whatever comes out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys

import pytest


pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _hpo  # noqa: E402


CONFIG = _hpo.Config(n_layers=2, width=32, batch_size=32, lr=3e-3, weight_decay=1e-5)


def test_training_is_the_same_however_it_is_requested() -> None:
    """Two studies asking for one configuration see one trajectory (the sharing is fair)."""
    splits = _hpo.load_splits("wine")
    in_one_go = _hpo.TrainingPool(splits, seed=3, max_epochs=4).get(CONFIG)
    in_pieces = _hpo.TrainingPool(splits, seed=3, max_epochs=4).get(CONFIG)
    other_seed = _hpo.TrainingPool(splits, seed=4, max_epochs=4).get(CONFIG)

    last = in_one_go.epoch(4)
    first = in_pieces.screen()  # scored after epoch 1, then trained on
    assert set(in_pieces.scores) == set(_hpo.ESTIMATORS)
    assert all(score.mu > 0 for score in in_pieces.scores.values())
    assert in_pieces.epoch(4) is in_pieces.epochs[3]

    def outcome(epoch: _hpo.Epoch) -> tuple[float, ...]:
        return dataclasses.astuple(dataclasses.replace(epoch, seconds=0.0))

    assert [outcome(e) for e in in_pieces.epochs] == [outcome(e) for e in in_one_go.epochs]
    assert outcome(first) == outcome(in_one_go.epochs[0])
    assert outcome(other_seed.epoch(4)) != outcome(last)
    assert not in_one_go.scores  # only screened configurations are scored


def test_a_configuration_trained_on_cannot_be_screened_afterwards() -> None:
    training = _hpo.TrainingPool(_hpo.load_splits("iris"), seed=0, max_epochs=3).get(CONFIG)
    training.epoch(2)
    with pytest.raises(RuntimeError, match="run the convexity searches of a pool before"):
        training.screen()


@pytest.mark.slow
def test_quick_mode_writes_the_report(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hpo_quality.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    data = json.loads((tmp_path / "hpo_quality.json").read_text())
    settings = data["settings"]
    runs = [run for result in data["results"] for run in result["runs"]]
    methods = {run["method"] for run in runs}
    assert len(methods) == 12
    assert len(runs) == len(settings["datasets"]) * settings["seeds"] * len(methods)
    budget = settings["n_screening"] + settings["n_promoted"] * settings["epochs"]
    for run in runs:
        assert 0.0 <= run["test_accuracy"] <= 1.0
        if run["method"].startswith("convexity"):
            assert run["epochs"] == budget
            assert run["n_trials"] == settings["n_screening"] + settings["n_promoted"]
            assert len(run["promoted"]) == settings["n_promoted"]
        else:
            assert run["budget"] in (budget, 3 * budget)
            assert run["epochs"] >= run["budget"]  # the last trial may cross the budget
    rows = [row for result in data["results"] for row in result["rank_quality"]]
    assert (
        len(rows) == len(settings["datasets"]) * settings["rank_seeds"] * (settings["n_screening"])
    )

    report = (tmp_path / "hpo_quality.md").read_text()
    for name in [*methods, *settings["datasets"], "Spearman", "Under-training"]:
        assert name in report
    assert (tmp_path / "hpo_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
