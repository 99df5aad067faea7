"""The search-quality benchmark: its shared training is deterministic, its quick mode runs.

No thresholds on the results: the benchmark reports whatever comes out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import rankdata
import torch


pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _hpo  # noqa: E402
import hpo_quality  # noqa: E402


CONFIG = _hpo.Config.of(
    {"n_layers": 2, "width": 32, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-5}
)


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
    assert methods == {m.name for m in hpo_quality.METHODS}
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
    for name in [*methods, *settings["datasets"], "Spearman", "Under-training", "bootstrap"]:
        assert name in report
    assert (tmp_path / "hpo_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run with the same settings reuses every kept job and trains nothing.
    again = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hpo_quality.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert " seed " not in again.stdout.split("# Search quality")[0]
    assert json.loads((tmp_path / "hpo_quality.json").read_text())["results"] == data["results"]


def test_mnist1d_splits_are_generated_and_the_noise_touches_training_labels_only() -> None:
    clean = _hpo.load_splits("mnist1d")
    noisy = _hpo.load_splits("mnist1d_noisy")
    assert (len(clean.y_train), len(clean.y_valid), len(clean.y_test)) == (4000, 800, 1200)
    assert clean.n_classes == 10 and clean.x_train.shape[1] == 40
    assert torch.equal(clean.x_train, noisy.x_train)
    assert torch.equal(clean.y_valid, noisy.y_valid) and torch.equal(clean.y_test, noisy.y_test)
    changed = float((clean.y_train != noisy.y_train).float().mean())
    assert 0.18 < changed < 0.22  # every flipped label moves to another class


def test_the_cnn_space_builds_and_trains() -> None:
    config = _hpo.Config.of(
        {
            "n_conv": 2,
            "channels": 8,
            "kernel": 5,
            "batch_size": 64,
            "lr": 3e-3,
            "weight_decay": 0.0,
        }
    )
    model = _hpo.build_model(config, 40, 10)
    assert model(torch.randn(3, 40)).shape == (3, 10)
    splits = _hpo.load_splits("mnist1d_cnn")
    training = _hpo.TrainingPool(splits, seed=0, max_epochs=2).get(config)
    first = training.screen()
    assert set(training.scores) == set(_hpo.ESTIMATORS)
    assert all(score.mu > 0 and score.loss > 0 for score in training.scores.values())
    assert 0.0 <= first.valid_accuracy <= 1.0


def test_partial_spearman_matches_the_residual_definition() -> None:
    """Against an independent computation: correlate the residuals of the ranks of x and y
    after regressing each on the ranks of z."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=40)
    x = z + rng.normal(size=40)
    y = z + 0.5 * x + rng.normal(size=40)
    rx, ry, rz = (rankdata(v) for v in (x, y, z))
    design = np.column_stack([np.ones(40), rz])

    def residual(v: np.ndarray) -> np.ndarray:
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    expected = float(np.corrcoef(residual(rx), residual(ry))[0, 1])
    assert hpo_quality._partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_agreement() -> None:
    mean, low, high = hpo_quality._bootstrap_difference([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and low < mean < high
    assert hpo_quality._bootstrap_difference([2.0] * 10) == (2.0, 2.0, 2.0)
