"""The last_layer and paper estimators against independent dense Hessians (float64)."""

from __future__ import annotations

from collections.abc import Callable
import copy
import dataclasses
import functools
import math
from typing import Any

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from optuna_convexity.hessian import LastLayerEstimator
from optuna_convexity.hessian import PaperEstimator
from optuna_convexity.hessian import strong_convexity
from tests.hessian.conftest import dense_head_hessian_norm
from tests.hessian.conftest import DEVICES
from tests.hessian.conftest import LogSoftmaxMLP
from tests.hessian.conftest import mlp
from tests.hessian.conftest import Residual
from tests.hessian.conftest import SigmoidMLP
from tests.hessian.conftest import SmallCNN


RELATIVE_TOLERANCE = 1e-6


@dataclasses.dataclass
class Case:
    name: str
    model: Callable[[], nn.Module]
    head: Callable[[nn.Module], nn.Linear]
    loss: Any
    inputs: Callable[[int], torch.Tensor]
    targets: Callable[[int], torch.Tensor]


def _classes(k: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randint(0, k, (n,))


def _features(d: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randn(n, d, dtype=torch.float64)


def _binary(shape: tuple[int, ...]) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randint(0, 2, (n, *shape)).to(torch.float64)


def _last(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


CLASS_WEIGHTS = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7], dtype=torch.float64)

CASES = [
    Case("ce", lambda: mlp(6, 7, 5), _last, nn.CrossEntropyLoss(), _features(6), _classes(5)),
    Case(
        "ce_no_bias",
        lambda: mlp(6, 7, 5, bias=False),
        _last,
        nn.CrossEntropyLoss(),
        _features(6),
        _classes(5),
    ),
    Case(
        "ce_sum",
        lambda: mlp(6, 7, 5),
        _last,
        nn.CrossEntropyLoss(reduction="sum"),
        _features(6),
        _classes(5),
    ),
    Case(
        "ce_weighted_ignore",
        lambda: mlp(6, 7, 5),
        _last,
        nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, ignore_index=2),
        _features(6),
        _classes(5),
    ),
    Case(
        "ce_weighted_smoothing",
        lambda: mlp(6, 7, 5),
        _last,
        nn.CrossEntropyLoss(weight=CLASS_WEIGHTS, label_smoothing=0.2),
        _features(6),
        _classes(5),
    ),
    Case(
        "ce_ignore_negative",
        lambda: mlp(6, 7, 5),
        _last,
        nn.CrossEntropyLoss(),
        _features(6),
        lambda n: torch.where(torch.rand(n) < 0.3, -100, torch.randint(0, 5, (n,))),
    ),
    Case(
        "ce_probabilities",
        lambda: mlp(6, 7, 5),
        _last,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        _features(6),
        lambda n: torch.softmax(torch.randn(n, 5, dtype=torch.float64), dim=1),
    ),
    Case(
        "ce_functional_partial",
        lambda: mlp(6, 7, 5),
        _last,
        functools.partial(F.cross_entropy, label_smoothing=0.05),
        _features(6),
        _classes(5),
    ),
    Case(
        "ce_many_classes_pairwise",
        lambda: mlp(4, 5, 50),
        _last,
        nn.CrossEntropyLoss(),
        _features(4),
        _classes(50),
    ),
    Case(
        "ce_many_classes_weighted",
        lambda: mlp(4, 5, 50),
        _last,
        nn.CrossEntropyLoss(weight=torch.rand(50, dtype=torch.float64) + 0.5, ignore_index=3),
        _features(4),
        _classes(50),
    ),
    Case(
        "nll_on_log_softmax",
        LogSoftmaxMLP,
        lambda m: m.out,
        nn.NLLLoss(),
        _features(5),
        _classes(4),
    ),
    Case(
        "ce_on_log_softmax",
        LogSoftmaxMLP,
        lambda m: m.out,
        nn.CrossEntropyLoss(),
        _features(5),
        _classes(4),
    ),
    Case(
        "bce_logits",
        lambda: mlp(6, 7, 3),
        _last,
        nn.BCEWithLogitsLoss(),
        _features(6),
        _binary((3,)),
    ),
    Case(
        "bce_logits_no_bias",
        lambda: mlp(6, 7, 3, bias=False),
        _last,
        nn.BCEWithLogitsLoss(),
        _features(6),
        _binary((3,)),
    ),
    Case(
        "bce_logits_weighted",
        lambda: mlp(6, 7, 3),
        _last,
        nn.BCEWithLogitsLoss(
            weight=torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64),
            pos_weight=torch.tensor([3.0, 1.0, 0.25], dtype=torch.float64),
        ),
        _features(6),
        _binary((3,)),
    ),
    Case(
        "bce_functional_sum",
        lambda: mlp(6, 7, 3),
        _last,
        functools.partial(F.binary_cross_entropy_with_logits, reduction="sum"),
        _features(6),
        _binary((3,)),
    ),
    Case(
        "bce_on_sigmoid_squeezed",
        SigmoidMLP,
        lambda m: m.out,
        nn.BCELoss(),
        _features(5),
        lambda n: torch.randint(0, 2, (n,)).to(torch.float64),
    ),
    Case(
        "mse",
        lambda: mlp(6, 7, 3),
        _last,
        nn.MSELoss(),
        _features(6),
        lambda n: torch.randn(n, 3, dtype=torch.float64),
    ),
    Case(
        "mse_no_bias_sum",
        lambda: mlp(6, 7, 3, bias=False),
        _last,
        nn.MSELoss(reduction="sum"),
        _features(6),
        lambda n: torch.randn(n, 3, dtype=torch.float64),
    ),
    Case(
        "mse_functional",
        lambda: mlp(6, 7, 2),
        _last,
        F.mse_loss,
        _features(6),
        lambda n: torch.randn(n, 2, dtype=torch.float64),
    ),
    Case(
        "residual_forward",
        Residual,
        lambda m: m.classifier,
        nn.CrossEntropyLoss(),
        _features(6),
        _classes(4),
    ),
    Case(
        "cnn_batchnorm",
        SmallCNN,
        lambda m: m.head,
        nn.CrossEntropyLoss(),
        lambda n: torch.randn(n, 1, 4, 4, dtype=torch.float64),
        _classes(3),
    ),
]


def _batches(case: Case, sizes: list[int], device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(case.inputs(n).to(device), case.targets(n).to(device)) for n in sizes]


def _reference(case: Case, model: nn.Module, batches: list[Any]) -> list[float]:
    head = case.head(model)
    return [dense_head_hessian_norm(model, head, x, y, case.loss) for x, y in batches]


def _to_device(case: Case, device: str) -> Case:
    loss = case.loss
    if isinstance(loss, nn.Module):
        loss = loss.to(device)
    return dataclasses.replace(case, loss=loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_last_layer_matches_dense_hessian(case: Case, device: str) -> None:
    case = _to_device(case, device)
    model = case.model().double().to(device)
    # Batches of different sizes: several groups, a group break and a short last batch.
    batches = _batches(case, [13, 13, 13, 9, 13, 5], device)
    result = strong_convexity(model, batches, case.loss, estimator="last_layer")
    reference = _reference(case, model, batches)
    assert result.n_batches == len(batches)
    assert result.n_nonfinite == 0
    for estimate, expected in zip(result.batch_norms, reference):
        assert expected > 0
        assert abs(estimate - expected) <= RELATIVE_TOLERANCE * expected
    assert result.mu == pytest.approx(max(reference), rel=RELATIVE_TOLERANCE)


@pytest.mark.parametrize("group_size", [1, 2, 5])
def test_grouping_does_not_change_values(group_size: int) -> None:
    case = CASES[0]
    model = case.model().double()
    batches = _batches(case, [11] * 7, "cpu")
    result = strong_convexity(
        model, batches, case.loss, estimator=LastLayerEstimator(group_size=group_size)
    )
    reference = _reference(case, model, batches)
    assert result.batch_norms == pytest.approx(reference, rel=RELATIVE_TOLERANCE)


@pytest.mark.parametrize(
    ("loss", "n_out"),
    [
        (nn.CrossEntropyLoss(), 4),  # the factored form
        (nn.CrossEntropyLoss(), 50),  # the pairwise form (48 classes and more)
        (nn.BCEWithLogitsLoss(), 2),
        (nn.MSELoss(), 3),
    ],
    ids=["cross_entropy", "cross_entropy_pairwise", "bce", "mse"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_large_batch_in_tiles_is_exact(loss: nn.Module, n_out: int, device: str) -> None:
    """A batch above the grouping limit, in tiles of 300 (the last one ragged), against the
    dense float64 Hessian of the head; confident predictions make the pairwise terms small."""
    model = mlp(3, 4, n_out).double()
    with torch.no_grad():
        model[2].weight.mul_(3.0)
    n = 2100
    x = torch.randn(n, 3, dtype=torch.float64)
    if isinstance(loss, nn.CrossEntropyLoss):
        y = torch.randint(0, n_out, (n,))
    elif isinstance(loss, nn.BCEWithLogitsLoss):
        y = torch.randint(0, 2, (n, n_out)).double()
    else:
        y = torch.randn(n, n_out, dtype=torch.float64)
    model, x, y = model.to(device), x.to(device), y.to(device)
    result = strong_convexity(model, [(x, y)], loss, estimator=LastLayerEstimator(chunk_size=300))
    expected = dense_head_hessian_norm(model, model[2], x, y, loss)
    assert result.mu == pytest.approx(expected, rel=RELATIVE_TOLERANCE)
    default_tiles = strong_convexity(model, [(x, y)], loss)
    assert default_tiles.mu == pytest.approx(expected, rel=RELATIVE_TOLERANCE)


def test_costly_large_batch_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna_convexity.hessian import _last_layer

    monkeypatch.setattr(_last_layer, "_WARN_MULTIPLY_ADDS", 1e6)
    model = mlp(3, 4, 5)
    batches = [(torch.randn(2100, 3), torch.randint(0, 5, (2100,))) for _ in range(2)]
    with pytest.warns(UserWarning, match="one batch of 2100 examples costs about") as caught:
        strong_convexity(model, batches, nn.CrossEntropyLoss())
    assert len([w for w in caught if "costs about" in str(w.message)]) == 1
    assert caught[0].filename == __file__  # points at the caller's line


def _textbook_float32_norm(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """The expanded formula <S_i,S_j> = sum p_i p_j (1 - p_i - p_j) + (p_i . p_j)^2, float32."""
    with torch.no_grad():
        a = torch.cat([torch.tanh(model[0](x)), torch.ones(len(x), 1)], dim=1)
        p = torch.softmax(model(x), dim=1)
        pp = p @ p.T
        k = pp - (p * p) @ p.T - p @ (p * p).T + pp * pp
        return float(((k * (a @ a.T).square()).sum() / len(x) ** 2).clamp(min=0).sqrt())


def test_confident_predictions_stay_accurate_in_float32() -> None:
    """Confident predictions make the textbook expansion cancel; the stable form must not."""
    model = mlp(6, 16, 10)
    with torch.no_grad():  # every example predicts class 3 with 1 - p ~ 1e-8
        model[2].weight.mul_(0.5)
        model[2].bias.zero_()
        model[2].bias[3] = 20.0
    x = torch.randn(64, 6)
    y = torch.randint(0, 10, (64,))
    model64 = mlp(6, 16, 10).double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        top = torch.softmax(model64(x.double()), dim=1).max(dim=1).values
    assert (1 - top).median() < 1e-7  # genuinely confident
    expected = dense_head_hessian_norm(model64, model64[2], x.double(), y, nn.CrossEntropyLoss())
    textbook = _textbook_float32_norm(model, x, y)
    assert abs(textbook - expected) > 0.5 * expected  # the hazard is real here
    estimate = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss()).mu
    assert estimate == pytest.approx(expected, rel=1e-5)


def _head_hessian_norm_mp(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """||d^2 CE / d(W, b)^2||_F of ``model[2]``, densely, at 50 significant digits: float64
    autograd itself cancels here (``p - p^2`` with ``p = 1 - 1e-26`` is ``0`` in float64)."""
    import mpmath

    mpmath.mp.dps = 50
    with torch.no_grad():
        hidden = copy.deepcopy(model[:2]).double()(x.double()).tolist()
    weight = model[2].weight.double().tolist()
    bias = model[2].bias.double().tolist()
    n, n_classes = len(hidden), len(bias)
    width = len(hidden[0]) + 1
    dense = mpmath.zeros(n_classes * width, n_classes * width)
    for a, target in zip(hidden, y.tolist()):
        assert 0 <= target < n_classes  # the Hessian does not depend on the target
        a_tilde = [mpmath.mpf(v) for v in a] + [mpmath.mpf(1)]
        z = [
            sum(mpmath.mpf(w) * v for w, v in zip(row, a_tilde)) + mpmath.mpf(b)
            for row, b in zip(weight, bias)
        ]
        top = max(z)
        e = [mpmath.exp(v - top) for v in z]
        p = [v / sum(e) for v in e]
        for c in range(n_classes):
            for d in range(n_classes):
                s_cd = (p[c] if c == d else 0) - p[c] * p[d]
                for i in range(width):
                    for j in range(width):
                        dense[c * width + i, d * width + j] += s_cd * a_tilde[i] * a_tilde[j] / n
    return float(mpmath.mnorm(dense, "f"))


@pytest.mark.parametrize("gap", [60.0, 80.0])
def test_very_confident_predictions_do_not_underflow_to_zero(gap: float) -> None:
    """Logits like ``[60, 0, 0, 0]``: every curvature entry is near ``1e-26`` and its square
    underflows float32; the score must still match the exact Hessian, not be ``0.0``."""
    model = mlp(6, 4, 4)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
        model[2].bias.copy_(torch.tensor([gap, 0.0, 0.0, 0.0]))
    x = torch.randn(12, 6)
    y = torch.randint(0, 4, (12,))
    expected = _head_hessian_norm_mp(model, x, y)
    assert 0.0 < expected < 1e-20  # flatter than float32's squares can express
    estimate = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss()).mu
    assert estimate == pytest.approx(expected, rel=1e-4, abs=0.0)


def test_autocast_bfloat16_is_computed_in_float32() -> None:
    """Under bf16 autocast the closed form must use float32 math on the bf16 activations."""
    model = mlp(8, 32, 5)
    x = torch.randn(64, 8)
    y = torch.randint(0, 5, (64,))
    captured: dict[str, torch.Tensor] = {}
    hook = model[2].register_forward_hook(
        lambda m, args, out: captured.update(a=args[0].detach(), z=out.detach())
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        estimate = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss()).mu
    hook.remove()
    assert captured["z"].dtype == torch.bfloat16
    a = captured["a"].double()
    weight = model[2].weight.detach().double()
    bias = model[2].bias.detach().double()
    # Ground truth: the Hessian at the activations the bf16 forward produced, in float64,
    # with the logits the bf16 forward produced (their bf16 rounding included).
    z_seen = captured["z"].double()
    offset = z_seen - (a @ weight.T + bias)

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(a @ w.T + b + offset, y)

    blocks = torch.autograd.functional.hessian(loss, (weight, bias))
    expected = float(sum(b.square().sum() for row in blocks for b in row).sqrt())
    assert estimate == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_paper_estimator_is_the_authors_ratio(device: str) -> None:
    model = mlp(6, 7, 5).double().to(device)
    batches = [
        (
            torch.randn(n, 6, dtype=torch.float64, device=device),
            torch.randint(0, 5, (n,), device=device),
        )
        for n in (8, 16, 4)
    ]
    result = strong_convexity(model, batches, nn.CrossEntropyLoss(), estimator="paper")
    weight_norm = model[2].weight.detach().norm().item()
    expected = []
    for x, _ in batches:
        a = torch.tanh(model[0](x)).detach()
        expected.append(a.norm().item() / weight_norm)
    assert result.batch_norms == pytest.approx(expected, rel=1e-12)
    assert result.estimator == "paper"

    output = strong_convexity(
        model, batches, nn.CrossEntropyLoss(), estimator=PaperEstimator(variant="output")
    )
    with torch.no_grad():
        p_norms = [torch.softmax(model(x), dim=1).norm().item() for x, _ in batches]
    assert output.batch_norms == pytest.approx(
        [e * p for e, p in zip(expected, p_norms)], rel=1e-12
    )


def test_paper_score_grows_with_batch_size() -> None:
    """The documented caveat: the paper's score is not comparable across batch sizes."""
    model = mlp(6, 7, 5).double()
    x = torch.randn(256, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (256,))
    small = strong_convexity(model, [(x[:32], y[:32])], nn.CrossEntropyLoss(), estimator="paper")
    large = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss(), estimator="paper")
    exact_small = strong_convexity(model, [(x[:32], y[:32])], nn.CrossEntropyLoss())
    exact_large = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss())
    assert large.mu / small.mu > 2.0
    assert 0.5 < exact_large.mu / exact_small.mu < 2.0


def test_explicit_last_layer_by_name_and_module() -> None:
    model = Residual().double()
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    auto = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss())
    by_name = strong_convexity(model, [(x, y)], nn.CrossEntropyLoss(), last_layer="classifier")
    by_module = strong_convexity(
        model, [(x, y)], nn.CrossEntropyLoss(), last_layer=model.classifier
    )
    assert auto.mu == by_name.mu == by_module.mu
    # The paper estimator may be pointed at any linear layer; its score is ||A|| / ||W||.
    inner = strong_convexity(
        model, [(x, y)], nn.CrossEntropyLoss(), estimator="paper", last_layer="branch"
    )
    h = torch.tanh(model.embed(x)).detach()
    assert inner.mu == pytest.approx(h.norm().item() / model.branch.weight.norm().item())


def test_dict_and_tuple_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.left = nn.Linear(3, 4)
            self.right = nn.Linear(2, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.left(left) + self.right(right)))

    model = TwoInputs().double()
    left = torch.randn(9, 3, dtype=torch.float64)
    right = torch.randn(9, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    as_tuple = strong_convexity(model, [((left, right), y)], nn.CrossEntropyLoss())
    as_dict = strong_convexity(model, [({"left": left, "right": right}, y)], nn.CrossEntropyLoss())
    assert as_tuple.mu == as_dict.mu
    assert math.isfinite(as_tuple.mu)


def test_max_batches_and_max_examples() -> None:
    model = mlp(6, 7, 5).double()
    batches = [
        (torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 5, (10,))) for _ in range(6)
    ]
    everything = strong_convexity(model, batches, nn.CrossEntropyLoss())
    first_two = strong_convexity(model, batches, nn.CrossEntropyLoss(), max_batches=2)
    assert first_two.n_batches == 2
    assert first_two.batch_norms == everything.batch_norms[:2]
    three = strong_convexity(model, batches, nn.CrossEntropyLoss(), max_examples=25)
    assert three.n_batches == 3
    assert three.n_examples == 30
