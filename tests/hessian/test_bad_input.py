"""Bad input to the Hessian module, in one place: each case is a mistake a user can make with
models, loaders, losses, targets, devices and estimator settings, and the clear error it must
give (its type, and a message naming the problem and the fix).

The cases of the search (sampler, pruner, study) are in ``tests/search/test_bad_input.py``.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import LastLayerEstimator
from optuna_convexity.hessian import PaperEstimator
from optuna_convexity.hessian import strong_convexity
from tests.bad_input import Bad


N = 8


def _mlp(n_out: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, n_out))


def _x() -> torch.Tensor:
    return torch.randn(N, 5)


def _classes(*values: int) -> torch.Tensor:
    return torch.tensor([values[i % len(values)] for i in range(N)])


GOOD = _classes(0, 1, 2)


def _score(
    loader: Any,
    loss_fn: Any = None,
    model: Any = None,
    **kwargs: Any,
) -> Callable[[], object]:
    """A call of ``strong_convexity`` (models and data built when the case runs)."""

    def call() -> object:
        return strong_convexity(
            _mlp() if model is None else model(),
            loader() if callable(loader) else loader,
            nn.CrossEntropyLoss() if loss_fn is None else loss_fn,
            **kwargs,
        )

    return call


def _later_batch(targets: torch.Tensor) -> Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Three good batches, then one with ``targets``."""
    return lambda: [(_x(), GOOD)] * 3 + [(_x(), targets)]


class _ReturnsTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x), x


class _HeadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head(x))


class _Scaled(nn.Module):
    """Cross-entropy on twice the logits: neither the head's output nor its log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.head(x)


def _frozen_head() -> nn.Module:
    model = _mlp()
    model[2].weight.requires_grad_(False)
    return model


CASES = [
    # -- arguments ------------------------------------------------------------------------
    Bad("model_not_a_module", _score([(_x(), GOOD)], model=lambda: "mlp"), TypeError,
        r"model must be a torch\.nn\.Module, got str"),
    Bad("loss_not_callable", _score([(_x(), GOOD)], loss_fn="cross_entropy"), TypeError,
        r"loss_fn must be callable, got str"),
    Bad("loader_not_iterable", _score(5), TypeError,
        r"loader must be an iterable of \(inputs, targets\) batches.*DataLoader.*got int"),
    Bad("loader_is_a_tensor", _score(torch.zeros(3)), TypeError,
        r"loader must be an iterable of \(inputs, targets\) batches"),
    Bad("max_batches_zero", _score([(_x(), GOOD)], max_batches=0), ValueError,
        r"max_batches must be a positive integer or None, got 0 \(int\)"),
    Bad("max_examples_float", _score([(_x(), GOOD)], max_examples=2.5), ValueError,
        r"max_examples must be a positive integer or None, got 2\.5 \(float\)"),
    Bad("max_batches_bool", _score([(_x(), GOOD)], max_batches=True), ValueError,
        r"max_batches must be a positive integer or None, got True \(bool\)"),
    Bad("unknown_estimator", _score([(_x(), GOOD)], estimator="exact"), ValueError,
        r"Unknown estimator 'exact'\. Use one of 'paper', 'last_layer', 'hutchinson'"),
    Bad("estimator_of_wrong_type", _score([(_x(), GOOD)], estimator=3), ValueError,
        r"Unknown estimator 3\..*HutchinsonEstimator\(n_probes=64\)"),
    Bad("n_probes_zero", lambda: HutchinsonEstimator(n_probes=0), ValueError,
        r"n_probes must be a positive integer, got 0"),
    Bad("n_probes_float", lambda: HutchinsonEstimator(n_probes=16.0), ValueError,  # type: ignore[arg-type]
        r"n_probes must be a positive integer, got 16\.0 \(float\)"),
    Bad("hutchpp_too_few_probes", lambda: HutchinsonEstimator(n_probes=2, hutchpp=True),
        ValueError, r"Hutch\+\+ splits its budget in three; n_probes must be at least 3"),
    Bad("unknown_distribution", lambda: HutchinsonEstimator(distribution="uniform"),  # type: ignore[arg-type]
        ValueError, r"distribution must be 'rademacher' or 'gaussian', got 'uniform'"),
    Bad("probe_batch_size_zero", lambda: HutchinsonEstimator(probe_batch_size=0), ValueError,
        r"probe_batch_size must be a positive integer or None, got 0"),
    Bad("hutchinson_seed_float", lambda: HutchinsonEstimator(seed=1.5), ValueError,  # type: ignore[arg-type]
        r"seed must be None or an integer from 0 to 2\*\*63 - 1, got 1\.5 \(float\)"),
    Bad("hutchinson_seed_negative", lambda: HutchinsonEstimator(seed=-1), ValueError,
        r"seed must be None or an integer from 0 to 2\*\*63 - 1, got -1"),
    Bad("unknown_strategy", lambda: HutchinsonEstimator(strategy="fast"), ValueError,  # type: ignore[arg-type]
        r"strategy must be one of \('auto', 'batched', 'loop', 'forward'\), got 'fast'"),
    Bad("unknown_paper_variant", lambda: PaperEstimator(variant="v2"), ValueError,  # type: ignore[arg-type]
        r"variant"),
    Bad("chunk_size_zero", lambda: LastLayerEstimator(chunk_size=0), ValueError,
        r"chunk_size must be a positive integer or None, got 0"),
    Bad("group_size_negative", lambda: LastLayerEstimator(group_size=-2), ValueError,
        r"group_size must be a positive integer or None, got -2"),
    # -- models ---------------------------------------------------------------------------
    Bad("model_without_linear_layer", _score([(_x(), GOOD)], model=lambda: nn.Tanh()),
        ValueError, r"no nn\.Linear layer.*estimator='hutchinson'"),
    Bad("model_returns_a_tuple", _score([(_x(), GOOD)], model=_ReturnsTuple), TypeError,
        r"returned a tuple.*Wrap the model so that it returns the tensor loss_fn takes"),
    Bad("head_called_twice", _score([(_x(), _classes(0, 4))], model=_HeadTwice), ValueError,
        r"ran 2 times"),
    Bad("frozen_head", _score([(_x(), GOOD)], model=_frozen_head), ValueError,
        r"frozen weight.*Use estimator='hutchinson'"),
    Bad("output_transformed_after_the_head", _score([(_x(), GOOD)], model=_Scaled),
        ValueError, r"neither the output of its last layer.*last_layer=\.\.\..*hutchinson"),
    Bad("last_layer_not_a_submodule", _score([(_x(), GOOD)], last_layer="head"), ValueError,
        r"not a submodule.*'0', '2'"),
    Bad("last_layer_not_linear", _score([(_x(), GOOD)], last_layer="1"), TypeError,
        r"Tanh"),
    Bad("inputs_of_the_wrong_width", _score([(torch.randn(N, 7), GOOD)]), ValueError,
        r"model failed on batch 0.*shape \(8, 7\).*mat1 and mat2.*inputs the model is trained"),
    Bad("inputs_of_the_wrong_dtype", _score([(_x().double(), GOOD)], estimator="hutchinson"),
        ValueError, r"model failed on batch 0.*float64.*parameters are torch\.float32"),
    Bad("inputs_wrong_only_in_a_later_batch",
        _score(lambda: [(_x(), GOOD), (torch.randn(N, 6), GOOD)]), ValueError,
        r"model failed on batch 1"),
    # -- devices --------------------------------------------------------------------------
    Bad("model_on_the_meta_device",
        _score([(_x(), GOOD)], model=lambda: nn.Linear(5, 3, device="meta")), ValueError,
        r"meta device.*Materialise them first.*to_empty"),
    # -- loaders --------------------------------------------------------------------------
    Bad("empty_loader", _score([]), ValueError, r"no batches.*drop_last"),
    Bad("batch_is_a_triple", _score([(_x(), GOOD, GOOD)]), TypeError,
        r"Batch 0 is a tuple of length 3; expected \(inputs, targets\).*for x, y, \*_ in"),
    Bad("batch_is_a_dict", _score([{"x": _x(), "y": GOOD}]), TypeError,
        r"Batch 0 is a dict with keys 'x', 'y'.*\(batch\['x'\], batch\['y'\]\) for batch in"),
    Bad("inputs_are_a_string", _score([("pixels", GOOD)]), TypeError,
        r"inputs must be a tensor, a tuple of tensors or a dict of them; got str"),
    Bad("targets_are_a_list", _score([(_x(), [0] * N)]), TypeError,
        r"targets must be a tensor, got list"),
    # -- losses ---------------------------------------------------------------------------
    Bad("loss_without_closed_form", _score([(_x(), GOOD)], loss_fn=nn.SmoothL1Loss()),
        ValueError, r"SmoothL1Loss.*hutchinson"),
    Bad("unreduced_loss", _score([(_x(), GOOD)], loss_fn=nn.CrossEntropyLoss(reduction="none")),
        ValueError, r"reduction='none'.*Use reduction='mean'"),
    Bad("unreduced_functional_loss",
        _score([(_x(), GOOD)], loss_fn=functools.partial(F.cross_entropy, reduction="none")),
        ValueError, r"cross_entropy has reduction='none'"),
    Bad("loss_returning_a_vector",
        _score([(_x(), GOOD)], loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"),
               estimator="hutchinson"),
        ValueError, r"loss_fn must return a scalar; it returned \(8,\)\. Use reduction='mean'"),
    Bad("nll_loss_on_raw_logits", _score([(_x(), GOOD)], loss_fn=nn.NLLLoss()), ValueError,
        r"expects log-probabilities.*Apply log_softmax in the model"),
    Bad("bce_loss_on_raw_logits",
        _score([(_x(), torch.rand(N, 1))], loss_fn=nn.BCELoss(), model=lambda: _mlp(1)),
        ValueError, r"expects probabilities.*Apply sigmoid in the model.*BCEWithLogitsLoss"),
    # -- targets --------------------------------------------------------------------------
    Bad("class_targets_of_shape_n_1", _score([(_x(), GOOD[:, None])]), ValueError,
        r"targets of shape \(8, 1\).*Pass class indices of shape \(8,\)"),
    Bad("float_class_indices", _score([(_x(), GOOD.float())]), ValueError,
        r"dtype torch\.float32 do not fit.*class indices of shape \(8,\) \(integer dtype\)"),
    Bad("regression_targets_that_would_broadcast",
        _score([(_x(), torch.randn(N))], loss_fn=nn.MSELoss(), model=lambda: _mlp(1)),
        ValueError, r"must be equal.*targets\.view\(8, 1\)"),
    Bad("wrong_targets_in_a_later_batch", _score(_later_batch(GOOD[:, None])), ValueError,
        r"do not fit"),
    Bad("class_index_out_of_range_first_batch", _score([(_x(), _classes(0, 3))]), ValueError,
        r"class index lies outside 0\.\.2.*Map the labels to 0\.\.2"),
    Bad("class_index_out_of_range_later_batch", _score(_later_batch(_classes(1, 7))),
        ValueError, r"class index lies outside 0\.\.2.*in at least one batch"),
    Bad("negative_class_index_later_batch", _score(_later_batch(_classes(-1, 0))), ValueError,
        r"class index lies outside 0\.\.2 \(and is not ignore_index=-100\)"),
    Bad("class_index_out_of_range_weighted_loss",
        _score(_later_batch(_classes(2, 5)), loss_fn=nn.CrossEntropyLoss(weight=torch.ones(3))),
        ValueError, r"class index lies outside 0\.\.2"),
    Bad("class_index_out_of_range_nll_loss",
        _score(_later_batch(_classes(3)), loss_fn=nn.NLLLoss(),
               model=lambda: nn.Sequential(_mlp(), nn.LogSoftmax(dim=1))),
        ValueError, r"NLLLoss: a target class index lies outside 0\.\.2"),
    Bad("class_index_out_of_range_hutchinson",
        _score(_later_batch(_classes(4)), estimator="hutchinson"), ValueError,
        r"class index lies outside 0\.\.2"),
    Bad("class_index_out_of_range_paper", _score(_later_batch(_classes(9)), estimator="paper"),
        ValueError, r"class index lies outside 0\.\.2"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error(case: Bad) -> None:
    with pytest.raises(case.error) as raised:
        case.call()
    assert type(raised.value) is case.error  # not a subclass, e.g. torch's own errors
    assert re.search(case.message, str(raised.value), flags=re.DOTALL), str(raised.value)


def test_the_cases_are_distinct() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
    assert len(CASES) >= 40


# -- documented outcomes: inputs that are accepted, with what they give ----------------------


def test_numpy_integers_are_counts() -> None:
    """Any ``numbers.Integral`` but ``bool`` is a count (``numpy.int64`` from a config file)."""
    estimator = HutchinsonEstimator(n_probes=np.int64(4), seed=np.int64(0))  # type: ignore[arg-type]
    assert type(estimator.n_probes) is int and estimator.n_probes == 4
    result = strong_convexity(_mlp(), [(_x(), GOOD)] * 3, nn.CrossEntropyLoss(),
                              max_batches=np.int64(2))  # type: ignore[arg-type]  # fmt: skip
    assert result.n_batches == 2


def test_ignored_targets_are_not_out_of_range() -> None:
    """``ignore_index`` targets are left out of the loss, not reported as out of range."""
    targets = GOOD.clone()
    targets[:3] = -100
    assert strong_convexity(_mlp(), [(_x(), targets)], nn.CrossEntropyLoss()).mu > 0
    targets[:3] = 7
    loss = nn.CrossEntropyLoss(ignore_index=7)
    assert strong_convexity(_mlp(), [(_x(), targets)], loss).mu > 0


def test_nonfinite_batches_are_left_out_and_counted() -> None:
    """A batch whose outputs are NaN is not an error: it is counted and left out of ``mu``."""
    x = _x()
    result = strong_convexity(_mlp(), [(x, GOOD), (x * np.nan, GOOD)], nn.CrossEntropyLoss())
    assert result.n_nonfinite == 1 and result.mu == result.batch_norms[0]
