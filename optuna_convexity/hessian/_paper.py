"""The authors' closed form (a faithful reproduction of the paper's score)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from optuna_convexity.hessian._base import as_matrix
from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._base import BatchScorer
from optuna_convexity.hessian._base import flat
from optuna_convexity.hessian._base import HeadScorer
from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._head import HeadCall
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._losses import describe_loss


class PaperEstimator(BaseHessianNormEstimator):
    r"""The authors' closed form: ``||A_B||_F / ||W||_F`` (optionally times ``||P_B||_F``).

    ``A_B`` is the batch's matrix of penultimate activations (the input of the last
    ``nn.Linear``), ``W`` that layer's weight, and ``P_B`` the batch's output activations:
    probabilities for classification losses (softmax for cross-entropy, sigmoid for binary
    cross-entropy), raw outputs otherwise.

    This is a faithful reproduction of the score in the authors' code (``variant="v1"``, their
    January 2024 version; ``variant="output"`` the December 2024 revision). It is **not** a
    Hessian norm, and it is **scale-dependent**: it grows with the batch size and the layer
    width, so scores of configurations that differ in batch size or width are not comparable.
    Prefer :class:`LastLayerEstimator` unless you are reproducing the paper.

    Args:
        variant:
            ``"v1"`` for ``||A_B||_F / ||W||_F``; ``"output"`` to also multiply by ``||P_B||_F``.

    Example:

        .. code-block:: python

            import torch
            from optuna_convexity.hessian import PaperEstimator, strong_convexity

            model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
            )
            data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
            score = strong_convexity(model, data, torch.nn.CrossEntropyLoss(),
                                     estimator=PaperEstimator(variant="output"))
    """

    name = "paper"

    def __init__(self, variant: Literal["v1", "output"] = "v1") -> None:
        if variant not in ("v1", "output"):
            raise ValueError(f"variant must be 'v1' or 'output', got {variant!r}.")
        self.variant = variant

    def describe(self) -> str:
        return "paper" if self.variant == "v1" else "paper(output)"

    def __repr__(self) -> str:
        return f"PaperEstimator(variant={self.variant!r})"

    def open(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> BatchScorer:
        return _PaperScorer(model, loss_fn, last_layer, self.variant)


class _PaperScorer(HeadScorer):
    def __init__(
        self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer, variant: str
    ) -> None:
        super().__init__(model, loss_fn, last_layer)
        self._variant = variant
        self._spec = describe_loss(loss_fn)
        self._weight_squared: torch.Tensor | None = None

    def _add(self, call: HeadCall, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self._weight_squared is None:
            weight = flat(call.layer.weight.detach())
            self._weight_squared = torch.dot(weight, weight)
        activations = flat(call.inputs)
        squared = torch.dot(activations, activations)
        if self._variant == "output":
            logits = as_matrix(call.outputs)
            kind = self._spec.kind if self._spec is not None else "squared"
            if kind == "softmax":
                probabilities = torch.softmax(logits.T, dim=0)
            elif kind == "sigmoid":
                probabilities = torch.sigmoid(logits)
            else:
                probabilities = logits
            probabilities = flat(probabilities)
            squared = squared * torch.dot(probabilities, probabilities)
        self._values.append(squared)

    def results(self) -> torch.Tensor:
        assert self._weight_squared is not None
        return (torch.stack(self._values) / self._weight_squared).sqrt()
