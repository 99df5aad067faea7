"""Checks that a batch's targets fit the model's outputs and the loss: their shapes (each
batch, before the loss sees them) and, for class indices, their range (on the device, for every
batch, reported after the last one)."""

from __future__ import annotations

from typing import Any

import torch

from optuna_convexity.hessian._losses import describe_loss
from optuna_convexity.hessian._losses import LossSpec


class ClassIndexCheck:
    """Checks every batch's class-index targets against the number of classes, on the device.

    Cross-entropy and NLL targets must lie in ``[0, C)`` or equal ``ignore_index``. PyTorch
    raises a bare ``IndexError`` on the CPU for a target out of range, and on a GPU a
    device-side assert that leaves the process unusable. :meth:`screen` records, per batch and
    without synchronising with the host, whether any target is out of range, and hands the
    loss (and the curvature) the targets with those entries set to ``ignore_index``, so nothing
    fails before :meth:`deferred_checks` reports the problem once, after the last batch.
    Other losses, and probability targets, pass through unchecked.
    """

    def __init__(self, loss_fn: Any) -> None:
        spec = describe_loss(loss_fn)
        self._spec = spec if spec is not None and spec.kind == "softmax" else None
        self._flags: list[torch.Tensor] = []
        self._n_classes = 0

    def screen(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` with out-of-range class indices set to ``ignore_index`` (recorded)."""
        spec = self._spec
        if (
            spec is None
            or not isinstance(outputs, torch.Tensor)
            or outputs.dim() < 2
            or targets.is_floating_point()
            or targets.dim() != outputs.dim() - 1
        ):
            return targets
        n_classes = outputs.shape[1]
        self._n_classes = max(self._n_classes, n_classes)
        bad = ((targets < 0) | (targets >= n_classes)) & (targets != spec.ignore_index)
        self._flags.append(bad.any())
        return targets.masked_fill(bad, spec.ignore_index)

    def deferred_checks(self) -> list[tuple[torch.Tensor, str]]:
        if not self._flags:
            return []
        assert self._spec is not None
        return [
            (
                torch.stack(self._flags).any(),
                f"{self._spec.name}: a target class index lies outside 0..{self._n_classes - 1} "
                f"(and is not ignore_index={self._spec.ignore_index}) in at least one batch "
                f"of the loader; the model has {self._n_classes} outputs. Map the labels to "
                f"0..{self._n_classes - 1}, or give the last layer one output per class.",
            )
        ]


def check_targets(spec: LossSpec, targets: torch.Tensor, output_shape: torch.Size) -> None:
    """Raise a ``ValueError`` naming the fix if one batch's targets do not fit its outputs."""
    if spec.kind == "softmax":
        if len(output_shape) != 2:
            raise ValueError(
                f"{spec.name}: the model's output has shape {tuple(output_shape)}; the last_layer "
                "estimator supports (batch, classes) outputs for cross-entropy."
            )
        n = output_shape[0]
        if targets.shape == output_shape and targets.is_floating_point():
            return
        if targets.shape == (n,) and not targets.is_floating_point():
            return
        raise ValueError(
            f"{spec.name}: targets of shape {tuple(targets.shape)} and dtype {targets.dtype} "
            f"do not fit outputs of shape {tuple(output_shape)}. Pass class indices of shape "
            f"({n},) (integer dtype) or class probabilities of shape {tuple(output_shape)}."
        )
    if targets.shape != output_shape:
        raise ValueError(
            f"{spec.name}: targets have shape {tuple(targets.shape)} but the model's output has "
            f"shape {tuple(output_shape)}; they must be equal (PyTorch would broadcast or fail). "
            f"Reshape the targets, e.g. targets.view({', '.join(map(str, output_shape))})."
        )
