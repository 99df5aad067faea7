"""The exact Hessian norm in the last linear layer's parameters, in closed form."""

from __future__ import annotations

from typing import Any
import warnings

import torch
from torch import nn

from optuna_convexity.hessian._arguments import count
from optuna_convexity.hessian._base import as_matrix
from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._base import BatchScorer
from optuna_convexity.hessian._base import compute_dtype
from optuna_convexity.hessian._base import full_precision
from optuna_convexity.hessian._base import HeadScorer
from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._base import one
from optuna_convexity.hessian._head import HeadCall
from optuna_convexity.hessian._head import is_view_of
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._losses import curvature_of
from optuna_convexity.hessian._losses import describe_loss
from optuna_convexity.hessian._losses import LossSpec
from optuna_convexity.hessian._losses import SUPPORTED_LOSSES
from optuna_convexity.hessian._targets import check_targets


class LastLayerEstimator(BaseHessianNormEstimator):
    r"""Exact ``||H||_F`` of the batch loss's Hessian in the last layer's ``(W, b)``.

    With ``a~_i`` the penultimate activation of example ``i`` (with a trailing 1 when the layer
    has a trainable bias) and ``Lambda_i`` the loss's Hessian in that example's logits
    (weighted as the loss's reduction weights it),

    .. math::

        H = \sum_i \Lambda_i \otimes \tilde a_i \tilde a_i^\top, \qquad
        \|H\|_F^2 = \sum_{i,j} \langle \Lambda_i, \Lambda_j \rangle_F\,
                    (\tilde a_i \cdot \tilde a_j)^2 .

    ``H`` is never formed: per batch, the cost is the Gram matrix of the activations
    (``n^2 d`` multiply-adds for ``n`` examples of width ``d``) and one ``n x n`` by
    ``n x C^2`` product (``n^2 C`` in a pairwise form from 48 classes on). Batches are
    evaluated in groups of ``group_size`` with batched products.

    Batches of more than 2048 examples are evaluated alone, in ``chunk_size x chunk_size``
    tiles of the pairs of examples (1024 by default), each unordered pair once: about
    ``n^2 (d + c) / 2`` multiply-adds, with ``c = 3 C`` in the pairwise form (``C (C + 1) / 2``
    below 48 classes, 0 for mean squared error). Memory is bounded by the tiles and the
    per-example curvature: about ``12 chunk_size^2 + 4 n C`` numbers in the float32 (or wider)
    compute dtype beyond the batch's own activations and logits (for 20,000 examples and 1,000
    classes with the default tiles, about 370 MiB). The cost stays quadratic in ``n``: a
    warning says so when one batch needs more than ``5e10`` multiply-adds.
    The math runs in float32 (or the model's wider dtype) even under autocast, and the
    softmax curvature uses a cancellation-free form that stays accurate for confident
    predictions.

    Supported losses: ``nn.CrossEntropyLoss`` (class indices or probabilities, ``weight``,
    ``ignore_index``, ``label_smoothing``), ``nn.NLLLoss`` on ``log_softmax`` outputs,
    ``nn.BCEWithLogitsLoss`` (``weight``, ``pos_weight``), ``nn.BCELoss`` on ``sigmoid``
    outputs, ``nn.MSELoss`` (the Hessian of PyTorch's mean over all ``n * C`` entries,
    ``(2 / (n C)) sum_i I (x) a~_i a~_i^T``), their functional forms and ``functools.partial``
    of those, with ``reduction`` ``"mean"`` or ``"sum"``. The model's output must be the last
    layer's output (or a reshape of it, or its ``log_softmax`` / ``sigmoid`` as the loss
    requires).

    Args:
        chunk_size:
            Rows and columns of the tiles of pairs of examples for batches of more than
            2048 examples; 1024 by default.
        group_size:
            Batches evaluated together; by default up to 8, fewer for large batches.

    Example:

        .. code-block:: python

            import torch
            from optuna_convexity.hessian import LastLayerEstimator, strong_convexity

            model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
            )
            data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
            mu = strong_convexity(model, data, torch.nn.CrossEntropyLoss(),
                                  estimator=LastLayerEstimator()).mu
    """

    name = "last_layer"

    def __init__(self, chunk_size: int | None = None, group_size: int | None = None) -> None:
        self.chunk_size = count("chunk_size", chunk_size, optional=True)
        self.group_size = count("group_size", group_size, optional=True)

    def __repr__(self) -> str:
        return (
            f"LastLayerEstimator(chunk_size={self.chunk_size!r}, group_size={self.group_size!r})"
        )

    def open(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> BatchScorer:
        spec = describe_loss(loss_fn)
        if spec is None:
            raise ValueError(
                f"The last_layer estimator knows the curvature of {SUPPORTED_LOSSES}; got "
                f"{loss_fn!r}. Use estimator='hutchinson', which works for any loss."
            )
        return _LastLayerScorer(model, loss_fn, last_layer, spec, self.chunk_size, self.group_size)


#: Batches of at most this many rows are evaluated in groups, larger ones in row chunks.
_GROUP_MAX_ROWS = 2048
#: Elements of the n x n Gram matrices formed at once (16 MiB in float32).
_GRAM_BUDGET = 1 << 22
#: Rows and columns of the tiles of a large batch's pairs (4 MiB per tile in float32).
_LARGE_BATCH_BLOCK = 1024
#: Warn once per pass about a batch whose exact norm costs more multiply-adds than this.
_WARN_MULTIPLY_ADDS = 5e10


class _LastLayerScorer(HeadScorer):
    """Evaluates ``||H_B||_F^2 = sum_ij K_ij (a~_i . a~_j)^2`` for groups of batches.

    Each batch's Gram matrix goes straight into a slot of a reused ``(B, n, n)`` buffer with
    ``addmm``, and its logits and targets are kept (references, no copy). When ``B`` batches of
    one shape are queued, their curvatures and norms are computed with batched operations, so
    the fixed cost of each tensor operation is paid once per group rather than once per batch.
    Batches of more than 2048 rows are evaluated alone, in tiles of pairs of examples.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFunction,
        last_layer: LastLayer,
        spec: LossSpec,
        chunk_size: int | None,
        group_size: int | None,
    ) -> None:
        super().__init__(model, loss_fn, last_layer)
        self._spec = spec
        self._chunk_size = chunk_size
        self._group_size = group_size
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_key: tuple[Any, ...] | None = None
        self._pending_shape: torch.Size | None = None
        self._gram_buffer: torch.Tensor | None = None
        self._with_bias = False
        self._warned = False

    def _check_first_batch(self, call: HeadCall, outputs: torch.Tensor) -> None:
        if not call.layer.weight.requires_grad:
            raise ValueError(
                f"The last layer {call.name!r} has a frozen weight (requires_grad=False); "
                "its Hessian is not part of training. Use estimator='hutchinson'."
            )
        bias = call.layer.bias
        self._with_bias = bias is not None and bias.requires_grad
        self._check_link(call, outputs)

    def _check_link(self, call: HeadCall, outputs: torch.Tensor) -> None:
        """The loss must see the head's output ``z`` through the link its curvature assumes."""
        spec = self._spec
        logits = call.outputs
        direct = is_view_of(outputs, logits)
        if spec.link == "identity" and spec.kind != "softmax":
            if not direct:
                raise ValueError(
                    f"{spec.name} needs the model's output to be the last layer's output, but "
                    f"{type(self._model).__name__} transforms the output of {call.name!r} "
                    "afterwards. Return the layer's output, pass the right layer as "
                    "last_layer=..., or use estimator='hutchinson'."
                )
            return
        if spec.link == "log_softmax" and direct:
            raise ValueError(
                f"{spec.name} expects log-probabilities but the model returns the raw output of "
                f"{call.name!r}. Apply log_softmax in the model, or use nn.CrossEntropyLoss."
            )
        if spec.link == "sigmoid" and direct:
            raise ValueError(
                f"{spec.name} expects probabilities but the model returns the raw output of "
                f"{call.name!r}. Apply sigmoid in the model, or use nn.BCEWithLogitsLoss."
            )
        if direct:  # cross-entropy on the logits themselves
            return
        dtype = compute_dtype(logits)
        if outputs.numel() != logits.numel():
            raise ValueError(
                f"{spec.name}: the model's output (shape {tuple(outputs.shape)}) is not computed "
                f"elementwise from its last layer {call.name!r} (output shape "
                f"{tuple(logits.shape)}). Pass the right layer as last_layer=..., or use "
                "estimator='hutchinson'."
            )
        z = logits.detach().to(dtype).reshape(outputs.shape)
        seen = outputs.detach().to(dtype)
        if spec.link == "sigmoid":
            expected, seen_as = torch.sigmoid(z), seen
            what = "sigmoid"
        else:  # the softmax of the output must be the softmax of z (covers log_softmax outputs)
            expected, seen_as = torch.log_softmax(z, dim=1), torch.log_softmax(seen, dim=1)
            what = "log_softmax"
        tolerance = max(1e-5, 16 * torch.finfo(outputs.dtype).eps)
        mismatch = ~torch.isclose(seen_as, expected, rtol=tolerance, atol=tolerance).all()
        self._checks.append(
            (
                mismatch,
                f"{spec.name}: the model's output is neither the output of its last layer "
                f"{call.name!r} nor its {what}, so the closed form does not apply. Pass the "
                "right layer as last_layer=..., or use estimator='hutchinson'.",
            )
        )

    def _check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        check_targets(self._spec, targets, outputs.shape)

    def _add(self, call: HeadCall, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        activations = as_matrix(call.inputs)
        logits = as_matrix(call.outputs)
        rows = activations.shape[0]
        if rows > _GROUP_MAX_ROWS:
            self._flush()
            self._values.append(self._blocked(activations, logits, targets, outputs.shape))
            return
        key = (
            rows,
            activations.shape[1],
            logits.shape[1],
            activations.dtype,
            targets.shape,
            targets.dtype,
            outputs.shape,
        )
        if key != self._pending_key:
            self._flush()
            self._pending_key = key
            self._pending_shape = outputs.shape
        group_size = self._group_size or max(1, min(8, _GRAM_BUDGET // (rows * rows)))
        buffer = self._gram_buffer
        if (
            buffer is None
            or buffer.shape[0] < group_size
            or buffer.shape[1] != rows
            or buffer.dtype != activations.dtype
            or buffer.device != activations.device
        ):
            buffer = self._gram_buffer = activations.new_empty(group_size, rows, rows)
        slot = buffer[len(self._pending)]
        if self._with_bias:  # (a_i . a_j + 1), the Gram matrix of [a_i; 1]
            torch.addmm(one(activations), activations, activations.T, out=slot)
        else:
            torch.mm(activations, activations.T, out=slot)
        self._pending.append((logits, targets))
        if len(self._pending) == group_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        assert self._gram_buffer is not None and self._pending_shape is not None
        logits = torch.stack([z for z, _ in self._pending])
        targets = torch.stack([y for _, y in self._pending])
        gram = self._gram_buffer[: len(self._pending)].square_()
        curvature = curvature_of(self._spec, logits, targets, self._pending_shape)
        self._values.append(curvature.norm(curvature.frobenius_squared(gram)))
        self._pending.clear()

    def _blocked(
        self,
        activations: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        output_shape: torch.Size,
    ) -> torch.Tensor:
        """One large batch in ``block x block`` tiles of the pairs of examples, each pair once:
        the diagonal tiles plus twice the tiles above them (``K`` and ``G`` are symmetric)."""
        n = activations.shape[0]
        block = self._chunk_size or _LARGE_BATCH_BLOCK
        curvature = curvature_of(self._spec, logits[None], targets[None], output_shape)
        if not self._warned:
            self._warn_if_costly(n, activations.shape[1] + 1, curvature.pair_cost)
        total = activations.new_zeros(1)
        starts = range(0, n, block)
        for index, start in enumerate(starts):
            rows = slice(start, min(n, start + block))
            for other in starts[index:]:
                columns = slice(other, min(n, other + block))
                if self._with_bias:
                    gram = torch.addmm(one(activations), activations[rows], activations[columns].T)
                else:
                    gram = activations[rows] @ activations[columns].T
                value = curvature.symmetric_block(gram.square_()[None], rows, columns)
                total = total + (value if other == start else 2.0 * value)
        return curvature.norm(total)

    def _warn_if_costly(self, n: int, width: int, pair_cost: int) -> None:
        multiply_adds = n * n * (width + pair_cost) / 2
        if multiply_adds > _WARN_MULTIPLY_ADDS:
            self._warned = True
            warnings.warn(
                f"last_layer: one batch of {n} examples costs about {multiply_adds:.1e} "
                f"multiply-adds (n^2 (d + c) / 2 with d = {width} activations and c = "
                f"{pair_cost} per pair of examples), which grows with the square of the batch "
                "size: expect seconds to minutes on a CPU. The score is a per-batch norm; "
                "smaller batches cost quadratically less.",
                stacklevel=6,
            )

    def results(self) -> torch.Tensor:
        device = self._gram_buffer.device if self._gram_buffer is not None else None
        with torch.no_grad(), full_precision(device):
            self._flush()
        return torch.cat([v.reshape(-1) for v in self._values])
