"""Scoring leaves the model and the RNGs untouched; bad input gets a clear error."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity
from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import LastLayerEstimator
from optuna_convexity.hessian import PaperEstimator
from optuna_convexity.hessian import strong_convexity
from tests.hessian.conftest import DEVICES
from tests.hessian.conftest import mlp


ESTIMATORS = [
    pytest.param(lambda: "last_layer", id="last_layer"),
    pytest.param(lambda: "paper", id="paper"),
    pytest.param(lambda: HutchinsonEstimator(n_probes=4), id="hutchinson"),
    pytest.param(lambda: HutchinsonEstimator(n_probes=6, hutchpp=True), id="hutchpp"),
    pytest.param(lambda: HutchinsonEstimator(n_probes=4, strategy="forward"), id="forward"),
    pytest.param(
        lambda: HutchinsonEstimator(n_probes=6, hutchpp=True, strategy="forward"),
        id="hutchpp-forward",
    ),
]


class Messy(nn.Module):
    """Dropout, BatchNorm, a frozen layer and a submodule kept in a different mode."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 8)
        self.frozen.requires_grad_(False)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.norm(self.frozen(x))))
        return self.head(torch.tanh(self.hidden(h)))


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state(),
    }


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    for key, tensor in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(tensor, after["state"][key]), key  # type: ignore[index]
    for name, grad in before["grads"].items():  # type: ignore[attr-defined]
        other = after["grads"][name]  # type: ignore[index]
        assert (grad is None and other is None) or torch.equal(grad, other), name
    assert before["requires_grad"] == after["requires_grad"]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])  # type: ignore[arg-type]


@pytest.mark.parametrize("make_estimator", ESTIMATORS)
def test_model_and_rng_are_left_as_found(make_estimator) -> None:  # type: ignore[no-untyped-def]
    model = Messy()
    model.train()
    model.hidden.eval()  # a mixed-mode model: must come back mixed
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    nn.CrossEntropyLoss()(model(x), y).backward()  # populated .grad, updated BN statistics
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # draws global RNG
    before = _snapshot(model)
    result = strong_convexity(model, loader, nn.CrossEntropyLoss(), estimator=make_estimator())
    _assert_same(before, _snapshot(model))
    assert result.n_batches == 4 and math.isfinite(result.mu)


@pytest.mark.parametrize("name", ["last_layer", "paper", "hutchinson", "forward"])
def test_no_grad_and_inference_mode_do_not_change_the_score(name: str) -> None:
    def make() -> str | HutchinsonEstimator:
        if name == "forward":
            return HutchinsonEstimator(n_probes=4, seed=3, strategy="forward")
        return HutchinsonEstimator(n_probes=4, seed=3) if name == "hutchinson" else name

    model = mlp(5, 6, 3)
    batches = [(torch.randn(12, 5), torch.randint(0, 3, (12,)))]
    plain = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator=make()).mu
    with torch.no_grad():
        under_no_grad = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator=make())
    with torch.inference_mode():
        under_inference = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator=make())
    assert under_no_grad.mu == pytest.approx(plain, rel=1e-6)
    assert under_inference.mu == pytest.approx(plain, rel=1e-6)


def test_hutchinson_accepts_inference_mode_tensors() -> None:
    model = mlp(5, 6, 3)
    with torch.inference_mode():
        batches = [(torch.randn(12, 5), torch.randint(0, 3, (12,)))]
    result = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator="hutchinson")
    assert math.isfinite(result.mu)


@pytest.mark.parametrize("device", DEVICES)
def test_scores_on_the_models_device(device: str) -> None:
    model = mlp(5, 6, 3).to(device)
    batches = [(torch.randn(12, 5), torch.randint(0, 3, (12,)))]  # on the CPU: moved for us
    for estimator in ("last_layer", "paper", "hutchinson"):
        result = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator=estimator)
        assert math.isfinite(result.mu)


# -- bad input -------------------------------------------------------------------------


def _data(n: int = 8, d: int = 5, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(n, d), torch.randint(0, classes, (n,)))]


def test_model_without_linear_layer() -> None:
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.Flatten())
    data = [(torch.randn(4, 1, 5), torch.randint(0, 9, (4,)))]
    with pytest.raises(ValueError, match="no nn.Linear layer.*estimator='hutchinson'"):
        strong_convexity(model, data, nn.CrossEntropyLoss())


def test_empty_loader() -> None:
    with pytest.raises(ValueError, match="no batches"):
        strong_convexity(mlp(5, 6, 3), [], nn.CrossEntropyLoss())


@pytest.mark.parametrize("estimator", ["last_layer", "paper", "hutchinson"])
def test_nan_batches_are_reported_and_left_out(estimator: str) -> None:
    model = mlp(5, 6, 3)
    data = [*_data(), *_data(), *_data()]
    data[1][0][0, 0] = math.nan  # one example with NaN input: NaN outputs in batch 1
    result = strong_convexity(model, data, nn.CrossEntropyLoss(), estimator=estimator)
    assert result.n_nonfinite == 1
    assert math.isnan(result.batch_norms[1])
    assert result.mu == max(result.batch_norms[0], result.batch_norms[2])
    all_nan = [(torch.full((8, 5), math.nan), torch.randint(0, 3, (8,)))]
    nothing = strong_convexity(model, all_nan, nn.CrossEntropyLoss(), estimator=estimator)
    assert math.isnan(nothing.mu) and nothing.n_nonfinite == nothing.n_batches == 1


def test_class_targets_of_the_wrong_shape() -> None:
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8, 1)))]
    with pytest.raises(ValueError, match=r"shape \(8, 1\).*\(8,\)"):
        strong_convexity(mlp(5, 6, 3), data, nn.CrossEntropyLoss())


def test_regression_targets_that_would_broadcast() -> None:
    data = [(torch.randn(8, 5), torch.randn(8))]
    with pytest.raises(ValueError, match=r"targets.view\(8, 1\)|must be equal"):
        strong_convexity(mlp(5, 6, 1), data, nn.MSELoss())


def test_later_batch_with_wrong_targets_is_caught() -> None:
    data = [*_data(), (torch.randn(8, 5), torch.randint(0, 3, (8, 2)))]
    with pytest.raises(ValueError, match="do not fit"):
        strong_convexity(mlp(5, 6, 3), data, nn.CrossEntropyLoss())


def test_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="Unknown estimator 'exact'.*'last_layer'"):
        strong_convexity(mlp(5, 6, 3), _data(), nn.CrossEntropyLoss(), estimator="exact")


def test_loss_without_closed_form() -> None:
    with pytest.raises(ValueError, match="SmoothL1Loss.*hutchinson"):
        strong_convexity(mlp(5, 6, 3), _data(), nn.SmoothL1Loss())


def test_unreduced_loss() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        strong_convexity(mlp(5, 6, 3), _data(), nn.CrossEntropyLoss(reduction="none"))


def test_nll_loss_on_raw_logits() -> None:
    with pytest.raises(ValueError, match="expects log-probabilities"):
        strong_convexity(mlp(5, 6, 3), _data(), nn.NLLLoss())


def test_output_transformed_after_the_head() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp(5, 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) * 2.0

    with pytest.raises(ValueError, match="neither the output of its last layer"):
        strong_convexity(Scaled(), _data(), nn.CrossEntropyLoss())
    regression = [(torch.randn(8, 5), torch.randn(8, 3))]
    with pytest.raises(ValueError, match="transforms the output"):
        strong_convexity(Scaled(), regression, nn.MSELoss())
    # The whole-network estimator has no such restriction.
    assert math.isfinite(
        strong_convexity(Scaled(), _data(), nn.CrossEntropyLoss(), estimator="hutchinson").mu
    )


def test_model_returning_a_tuple() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp(5, 6, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.body(x)
            return out, out

    with pytest.raises(TypeError, match="returned a tuple"):
        strong_convexity(Pair(), _data(), nn.CrossEntropyLoss())


def test_batches_that_are_not_pairs() -> None:
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,)), torch.ones(8))]
    with pytest.raises(TypeError, match="expected \\(inputs, targets\\)"):
        strong_convexity(mlp(5, 6, 3), data, nn.CrossEntropyLoss())


def test_last_layer_arguments() -> None:
    model = mlp(5, 6, 3)
    with pytest.raises(ValueError, match="not a submodule.*'0', '2'"):
        strong_convexity(model, _data(), nn.CrossEntropyLoss(), last_layer="head")
    with pytest.raises(TypeError, match="Tanh"):
        strong_convexity(model, _data(), nn.CrossEntropyLoss(), last_layer="1")
    with pytest.raises(ValueError, match="not a submodule"):
        strong_convexity(model, _data(), nn.CrossEntropyLoss(), last_layer=nn.Linear(6, 3))


def test_frozen_head() -> None:
    model = mlp(5, 6, 3)
    model[2].requires_grad_(False)
    with pytest.raises(ValueError, match="frozen weight"):
        strong_convexity(model, _data(), nn.CrossEntropyLoss())


def test_head_called_twice() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.square = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.square(torch.tanh(self.square(x)))

    data = [(torch.randn(8, 3), torch.randint(0, 3, (8,)))]
    with pytest.raises(ValueError, match="ran 2 times"):
        strong_convexity(Shared(), data, nn.CrossEntropyLoss())


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="max_batches"):
        strong_convexity(mlp(5, 6, 3), _data(), nn.CrossEntropyLoss(), max_batches=0)
    with pytest.raises(ValueError, match="n_probes"):
        HutchinsonEstimator(n_probes=0)
    with pytest.raises(ValueError, match="at least 3"):
        HutchinsonEstimator(n_probes=2, hutchpp=True)
    with pytest.raises(ValueError, match="distribution"):
        HutchinsonEstimator(distribution="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant"):
        PaperEstimator(variant="v3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        LastLayerEstimator(chunk_size=0)
    with pytest.raises(TypeError, match="nn.Module"):
        strong_convexity(lambda x: x, _data(), nn.CrossEntropyLoss())  # type: ignore[arg-type]


def test_hessian_subpackage_does_not_import_optuna() -> None:
    folder = Path(optuna_convexity.__file__).parent / "hessian"
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "optuna" for name in names), path


@pytest.mark.parametrize("make_estimator", ESTIMATORS)
def test_loss_is_the_eval_mode_loss_over_the_scored_examples(make_estimator) -> None:  # type: ignore[no-untyped-def]
    """``loss``: the training loss of the model as it is, from the scoring pass itself."""
    torch.manual_seed(0)
    model = Messy()
    model.train()
    inputs, targets = torch.randn(45, 6), torch.randint(0, 3, (45,))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=16)  # 16, 16, 13
    result = strong_convexity(model, loader, nn.CrossEntropyLoss(), estimator=make_estimator())
    model.eval()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(inputs), targets).item()
    assert result.loss == pytest.approx(expected, rel=1e-5)
    capped = strong_convexity(
        model, loader, nn.CrossEntropyLoss(), estimator=make_estimator(), max_batches=1
    )
    with torch.no_grad():
        first = nn.functional.cross_entropy(model(inputs[:16]), targets[:16]).item()
    assert capped.loss == pytest.approx(first, rel=1e-5)
    nan_batch = [(torch.full((4, 6), math.nan), torch.randint(0, 3, (4,)))]
    assert math.isnan(strong_convexity(model, nan_batch, nn.CrossEntropyLoss()).loss)
