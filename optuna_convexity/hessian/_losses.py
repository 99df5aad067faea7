"""The curvature of supported losses with respect to the logits.

For a linear last layer ``z_i = W a_i + b`` and a loss that is a weighted sum of per-example
terms ``L = sum_i ell(z_i, y_i)``, the Hessian of ``L`` with respect to ``(W, b)`` is

    H = sum_i Lambda_i (x) a~_i a~_i^T,      a~_i = [a_i; 1] (bias) or a_i,

where ``Lambda_i = d^2 ell / dz_i^2`` (C x C) already contains the reduction's weight. Hence

    ||H||_F^2 = sum_{i,j} <Lambda_i, Lambda_j>_F (a~_i . a~_j)^2 .

This module turns a loss function and a batch of logits into the matrix
``K_ij = <Lambda_i, Lambda_j>_F`` (whole, or one block at a time for large batches).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any
from typing import Literal

import torch
from torch import nn
import torch.nn.functional as F


_Kind = Literal["softmax", "sigmoid", "squared"]
_Link = Literal["identity", "log_softmax", "sigmoid"]

SUPPORTED_LOSSES = (
    "nn.CrossEntropyLoss, nn.NLLLoss (on log_softmax outputs), nn.BCEWithLogitsLoss, "
    "nn.BCELoss (on sigmoid outputs), nn.MSELoss, or their torch.nn.functional forms"
)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the estimators need to know about a loss function.

    Attributes:
        name: The loss's name, for messages.
        kind: The curvature family in the logits ``z``: softmax (cross-entropy), sigmoid
            (binary cross-entropy, elementwise) or squared (mean squared error).
        link: What the model must apply to the last layer's output ``z`` before the loss:
            nothing, ``log_softmax`` (for ``NLLLoss``) or ``sigmoid`` (for ``BCELoss``).
        reduction: ``"mean"`` or ``"sum"``.
    """

    name: str
    kind: _Kind
    link: _Link
    reduction: Literal["mean", "sum"]
    weight: torch.Tensor | None = None
    pos_weight: torch.Tensor | None = None
    ignore_index: int = -100
    label_smoothing: float = 0.0


def _options_of(loss_fn: Any) -> tuple[Any, dict[str, Any]]:
    """Return the loss's identity (class or function) and its keyword options."""
    if isinstance(loss_fn, functools.partial):
        inner, options = _options_of(loss_fn.func)
        return inner, {**options, **loss_fn.keywords}
    if isinstance(loss_fn, nn.Module):
        options = {
            key: getattr(loss_fn, key)
            for key in ("reduction", "weight", "pos_weight", "ignore_index", "label_smoothing")
            if hasattr(loss_fn, key)
        }
        return type(loss_fn), options
    return loss_fn, {}


_FUNCTIONAL: dict[Any, tuple[str, _Kind, _Link]] = {
    F.cross_entropy: ("cross_entropy", "softmax", "identity"),
    F.nll_loss: ("nll_loss", "softmax", "log_softmax"),
    F.binary_cross_entropy_with_logits: (
        "binary_cross_entropy_with_logits",
        "sigmoid",
        "identity",
    ),
    F.binary_cross_entropy: ("binary_cross_entropy", "sigmoid", "sigmoid"),
    F.mse_loss: ("mse_loss", "squared", "identity"),
}

_MODULES: dict[type, tuple[str, _Kind, _Link]] = {
    nn.CrossEntropyLoss: ("CrossEntropyLoss", "softmax", "identity"),
    nn.NLLLoss: ("NLLLoss", "softmax", "log_softmax"),
    nn.BCEWithLogitsLoss: ("BCEWithLogitsLoss", "sigmoid", "identity"),
    nn.BCELoss: ("BCELoss", "sigmoid", "sigmoid"),
    nn.MSELoss: ("MSELoss", "squared", "identity"),
}


def describe_loss(loss_fn: Any) -> LossSpec | None:
    """Recognise ``loss_fn``; return :obj:`None` if its curvature is not known in closed form."""
    identity, options = _options_of(loss_fn)
    known = _MODULES.get(identity) if isinstance(identity, type) else _FUNCTIONAL.get(identity)
    if known is None:
        return None
    name, kind, link = known
    reduction = options.get("reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"{name} has reduction={reduction!r}; the Hessian norm is defined for a scalar loss. "
            "Use reduction='mean' (the default) or 'sum'."
        )
    return LossSpec(
        name=name,
        kind=kind,
        link=link,
        reduction=reduction,
        weight=options.get("weight"),
        pos_weight=options.get("pos_weight"),
        ignore_index=int(options.get("ignore_index", -100)),
        label_smoothing=float(options.get("label_smoothing", 0.0)),
    )


class Curvature:
    """The per-example curvature blocks ``Lambda_i`` of a group of ``B`` batches of ``n`` rows.

    :meth:`frobenius_squared` returns, for each batch ``b``, ``sum_{i, j} <Lambda_bi,
    Lambda_bj>_F G_bij`` given a symmetric, entrywise non-negative ``G`` of shape ``(B, n, n)``
    (the squared Gram matrix of the activations); :meth:`symmetric_block` the same sum over
    one block of ``G``, for large batches. Both may be in units of a per-batch constant (so
    that the sum of tiny curvatures does not underflow): :meth:`norm` turns a sum of them into
    the Frobenius norm.
    """

    def norm(self, total: torch.Tensor) -> torch.Tensor:
        """The Frobenius norm of each batch from its sum of :meth:`frobenius_squared` or
        :meth:`symmetric_block` values."""
        return total.sqrt()

    #: Multiply-adds per pair of examples in :meth:`symmetric_block` (beyond the Gram matrix).
    pair_cost = 0

    def frobenius_squared(self, gram: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def symmetric_block(self, gram: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        """``sum_{i in rows, j in columns} (K_ij + K_ji) / 2 * G_ij`` for one block ``G[rows,
        columns]`` (shape ``(B, r, c)``): the whole sum is the diagonal blocks plus twice the
        blocks above them, so each pair of examples is visited once."""
        raise NotImplementedError


class FactoredCurvature(Curvature):
    """``Lambda_i`` flattened into the columns of ``Phi^T`` (``(B, m, n)``), so ``K = Phi Phi^T``:

        sum_{i in rows, j} K_ij G_ij = sum(Phi^T[:, :, rows] * (Phi^T @ G[:, rows]^T)),

    one batched matrix product instead of ``n x n`` elementwise work. Every row of ``Phi^T`` has
    one sign for all examples (see :func:`negated_softmax_blocks`) and ``G >= 0``, so every
    summand is non-negative: the sum cannot cancel. Examples are the last (contiguous)
    dimension, so reductions over classes run over a leading dimension, which PyTorch
    vectorises far better than a short last dimension. ``scale`` (a float or one value per
    batch) multiplies the result.

    Each batch's ``Phi`` is divided by its largest magnitude ``m_b`` (and :meth:`norm`
    multiplies the norm by ``m_b``): confident predictions make every entry tiny (logits
    ``[60, 0, 0, 0]`` give entries near ``1e-26``), and their squares, summed unscaled, would
    underflow float32 to a norm of exactly zero.
    """

    def __init__(self, phi_t: torch.Tensor, scale: float | torch.Tensor | None = None) -> None:
        magnitude = phi_t.abs().amax(dim=(1, 2))
        magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        self._phi_t = phi_t / magnitude[:, None, None]
        self._magnitude = magnitude
        self._scale = scale

    def norm(self, total: torch.Tensor) -> torch.Tensor:
        return self._magnitude * total.sqrt()

    def frobenius_squared(self, gram: torch.Tensor) -> torch.Tensor:
        phi_t = self._phi_t
        total = (phi_t * torch.bmm(phi_t, gram)).sum(dim=(1, 2))  # G is symmetric
        return total if self._scale is None else total * self._scale

    @property
    def pair_cost(self) -> int:  # type: ignore[override]
        return int(self._phi_t.shape[1])

    def symmetric_block(self, gram: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        kernel = torch.bmm(self._phi_t[:, :, rows].transpose(1, 2), self._phi_t[:, :, columns])
        total = (kernel * gram).sum(dim=(1, 2))
        return total if self._scale is None else total * self._scale


class ConstantCurvature(Curvature):
    """Mean squared error: ``Lambda_i = c I_C``, so ``K_ij = c^2 C`` for every pair."""

    def __init__(self, c: float, n_outputs: int) -> None:
        self._value = c * c * n_outputs

    def frobenius_squared(self, gram: torch.Tensor) -> torch.Tensor:
        return gram.sum(dim=(1, 2)) * self._value

    def symmetric_block(self, gram: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        return gram.sum(dim=(1, 2)) * self._value


_complement_matrices: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _minus_one_minus(probabilities_t: torch.Tensor) -> torch.Tensor:
    """``-(1 - p_c)`` for every class (classes in dimension 1), as ``-sum_{d != c} p_d``: a
    product with ``I - 1`` whose terms all have one sign, so it stays accurate where ``1 - p_c``
    is tiny (confident predictions), unlike the subtraction ``1 - p_c``."""
    n_classes = probabilities_t.shape[1]
    key = (n_classes, probabilities_t.dtype, probabilities_t.device)
    complement = _complement_matrices.get(key)
    if complement is None:
        eye = torch.eye(n_classes, dtype=probabilities_t.dtype, device=probabilities_t.device)
        complement = eye - 1.0
        _complement_matrices[key] = complement
    return complement @ probabilities_t


_packings: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _packing(
    n_classes: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the upper triangle (with diagonal) of a C x C matrix, and weights
    ``1`` (diagonal) or ``sqrt(2)`` (off-diagonal): for symmetric ``X, Y``,
    ``<X, Y>_F = sum_k w_k^2 x_k y_k`` over the packed entries."""
    key = (n_classes, dtype, device)
    if key not in _packings:
        rows, columns = torch.triu_indices(n_classes, n_classes, device=device)
        weights = torch.full(rows.shape, math.sqrt(2.0), dtype=dtype, device=device)
        weights[rows == columns] = 1.0
        _packings[key] = (rows * n_classes + columns, weights[None, :, None])
    return _packings[key]


def negated_softmax_blocks(probabilities_t: torch.Tensor) -> torch.Tensor:
    """``-S_i = p_i p_i^T - diag(p_i)`` for each example, packed as ``Phi^T``.

    ``probabilities_t`` has shape ``(B, C, n)``; the result ``(B, C (C + 1) / 2, n)`` holds the
    upper triangle of each symmetric block, off-diagonal entries scaled by ``sqrt(2)``, so that
    ``Phi_i . Phi_j = <S_i, S_j>_F`` with half the columns of the full ``C * C`` flattening.
    ``K = Phi Phi^T`` does not see a global sign, so ``-S`` saves a negation. Diagonal entries
    ``-p_c (1 - p_c)`` use the cancellation-free ``1 - p_c`` and are non-positive;
    off-diagonal entries ``p_c p_d`` are exact products and non-negative. Masked (all-zero)
    examples stay zero.
    """
    batches, n_classes, n = probabilities_t.shape
    blocks = probabilities_t[:, :, None, :] * probabilities_t[:, None, :, :]
    diagonal = blocks.diagonal(dim1=1, dim2=2).transpose(1, 2)
    torch.mul(probabilities_t, _minus_one_minus(probabilities_t), out=diagonal)
    indices, weights = _packing(n_classes, probabilities_t.dtype, probabilities_t.device)
    return blocks.view(batches, n_classes * n_classes, n).index_select(1, indices) * weights


class PairwiseSoftmaxCurvature(Curvature):
    """Cross-entropy with many classes, in O(n^2 C) instead of the O(n^2 C^2) of ``Phi``.

    Write ``p_i = e_{k_i} - r_i`` with ``k_i`` the top class, ``r_ik = 1 - p_ik`` (without
    cancellation) and ``r_ic = -p_ic`` otherwise. Then

        S_i = -diag(r_i) + e_k r_i^T + r_i e_k^T - r_i r_i^T

    holds only small, accurately known numbers, and expanding ``<S_i, S_j>`` and symmetrising
    (only ``sum_ij K_ij G_ij`` with a symmetric ``G`` is needed),

        K_ij = RR (1 + RR + 2 [k_i = k_j]) + 2 RR2 - 4 M (q_j + RR) + 2 M M^T,

    with ``RR = r_i . r_j``, ``RR2 = sum_c r_ic r_jc^2``, ``M_ij = r_i[k_j]``, ``q_j = r_j[k_j]``.
    All terms are of the order of the result, so there is no catastrophic cancellation.
    """

    def __init__(self, probabilities: torch.Tensor, omega: torch.Tensor) -> None:
        top = probabilities.argmax(dim=2)
        is_top = F.one_hot(top, probabilities.shape[2]).bool()
        one_minus_top = probabilities.masked_fill(is_top, 0.0).sum(dim=2)
        self._r = torch.where(is_top, one_minus_top[..., None], -probabilities)
        self._r_squared = self._r.square()
        self._top = top
        self._one_minus_top = one_minus_top
        self._omega = omega

    def frobenius_squared(self, gram: torch.Tensor) -> torch.Tensor:
        r, top = self._r, self._top
        rr = torch.bmm(r, r.transpose(1, 2))
        rr2 = torch.bmm(r, self._r_squared.transpose(1, 2))
        m = torch.gather(r, 2, top[:, None, :].expand(-1, r.shape[1], -1))
        same_top = (top[:, :, None] == top[:, None, :]).to(rr.dtype)
        k = (
            rr * (1.0 + rr + 2.0 * same_top)
            + 2.0 * rr2
            - 4.0 * m * (self._one_minus_top[:, None, :] + rr)
            + 2.0 * m * m.transpose(1, 2)
        )
        k = k * (self._omega[:, :, None] * self._omega[:, None, :])
        return (k * gram).sum(dim=(1, 2))

    @property
    def pair_cost(self) -> int:  # type: ignore[override]
        return 3 * int(self._r.shape[2])  # r_i . r_j and the symmetrised sum r_i . r_j^2

    def symmetric_block(self, gram: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        """The symmetrised ``(K_ij + K_ji) / 2`` of the expansion above, for one block:
        ``RR (1 + RR + 2 [k_i = k_j]) + RR2s - 2 M (q_j + RR) - 2 M' (q_i + RR) + 2 M M'``
        with ``RR2s = sum_c r_ic r_jc (r_ic + r_jc)`` (two products, no concatenation),
        ``M_ij = r_i[k_j]`` and ``M'_ij = r_j[k_i]``."""
        r_rows, r_columns = self._r[:, rows], self._r[:, columns]
        top_rows, top_columns = self._top[:, rows], self._top[:, columns]
        rr = torch.bmm(r_rows, r_columns.transpose(1, 2))
        rr2 = torch.bmm(self._r_squared[:, rows], r_columns.transpose(1, 2))
        rr2 = torch.baddbmm(rr2, r_rows, self._r_squared[:, columns].transpose(1, 2))
        m = torch.gather(r_rows, 2, top_columns[:, None, :].expand(-1, r_rows.shape[1], -1))
        m_swapped = torch.gather(
            r_columns, 2, top_rows[:, None, :].expand(-1, r_columns.shape[1], -1)
        )
        m_swapped = m_swapped.transpose(1, 2)
        same_top = top_rows[:, :, None] == top_columns[:, None, :]
        k = rr * (1.0 + rr + 2.0 * same_top) + rr2
        k -= 2.0 * m * (self._one_minus_top[:, None, columns] + rr)
        k -= 2.0 * m_swapped * (self._one_minus_top[:, rows, None] + rr)
        k += 2.0 * m * m_swapped
        k *= self._omega[:, rows, None] * self._omega[:, None, columns]
        return (k * gram).sum(dim=(1, 2))


#: From this many classes on, the C x C blocks of ``Phi`` cost more than the pairwise form.
PAIRWISE_MIN_CLASSES = 48


def _class_index_weights(
    spec: LossSpec, targets: torch.Tensor, n_classes: int, dtype: torch.dtype
) -> torch.Tensor:
    """Per-example factor omega_i of ``S_i`` for class-index targets, shape ``(B, n)``.

    ``(1 - eps) w[y_i] (-log p_{y_i}) + (eps / C) sum_c w_c (-log p_c)`` has Hessian in ``z_i``
    equal to its coefficients' sum times ``S_i``; examples whose target is ``ignore_index`` get 0.
    PyTorch's mean divides by ``sum_i w[y_i]`` over the kept examples (their count if unweighted).
    """
    keep = (targets != spec.ignore_index).to(dtype)
    if spec.weight is None:
        target_weight = keep
        omega = keep  # (1 - eps) + eps: label smoothing alone does not change the curvature
    else:
        weight = spec.weight.to(dtype)
        target_weight = weight[targets.masked_fill(keep == 0, 0)] * keep
        eps = spec.label_smoothing
        omega = (1.0 - eps) * target_weight + (eps / n_classes) * weight.sum() * keep
    if spec.reduction == "mean":
        omega = omega / target_weight.sum(dim=1, keepdim=True)
    return omega


def _probability_target_weights(
    spec: LossSpec, targets: torch.Tensor, n_classes: int, dtype: torch.dtype
) -> torch.Tensor:
    """omega_i for probability targets ``(B, n, C)``: ``sum_c w_c t_ic`` (smoothed), mean."""
    targets = targets.to(dtype)
    eps = spec.label_smoothing
    if eps:
        targets = (1.0 - eps) * targets + eps / n_classes
    if spec.weight is not None:
        omega = targets @ spec.weight.to(dtype)
    else:
        omega = targets.sum(dim=2)
    if spec.reduction == "mean":
        omega = omega / targets.shape[1]
    return omega


def curvature_of(
    spec: LossSpec, logits: torch.Tensor, targets: torch.Tensor, output_shape: torch.Size
) -> Curvature:
    """The curvature of ``spec`` for a group of batches.

    ``logits`` has shape ``(B, n, C)`` (rows = examples, columns = outputs of the last layer);
    ``targets`` stacks each batch's targets (checked with :func:`._targets.check_targets`), and
    ``output_shape`` is the shape of one batch's model output (a view of its logits).
    """
    batches, n, n_outputs = logits.shape
    dtype = logits.dtype
    if spec.kind == "softmax":
        if n_outputs >= PAIRWISE_MIN_CLASSES:
            probabilities = torch.softmax(logits, dim=2)
            if targets.dim() == 3:
                omega = _probability_target_weights(spec, targets, n_outputs, dtype)
            else:
                omega = _class_index_weights(spec, targets, n_outputs, dtype)
            return PairwiseSoftmaxCurvature(probabilities, omega)
        probabilities_t = torch.softmax(logits.transpose(1, 2), dim=1)
        if targets.dim() == 3:
            omega = _probability_target_weights(spec, targets, n_outputs, dtype)
            return FactoredCurvature(negated_softmax_blocks(probabilities_t) * omega[:, None, :])
        if spec.weight is not None:
            omega = _class_index_weights(spec, targets, n_outputs, dtype)
            return FactoredCurvature(negated_softmax_blocks(probabilities_t) * omega[:, None, :])
        # omega_i = keep_i / count: zeroing p_i zeroes S_i, and 1 / count^2 is one number per
        # batch, so no (B, C * C, n) scaling is needed.
        keep = targets != spec.ignore_index
        probabilities_t = probabilities_t * keep[:, None, :]
        counts = None
        if spec.reduction == "mean":
            counts = keep.sum(dim=1, dtype=dtype).square().reciprocal()
        return FactoredCurvature(negated_softmax_blocks(probabilities_t), counts)

    scale = 1.0 / output_shape.numel() if spec.reduction == "mean" else 1.0
    if spec.kind == "squared":
        return ConstantCurvature(2.0 * scale, n_outputs)

    # Binary cross-entropy, on logits or on sigmoid outputs: d^2/dz^2 = sigma(z) sigma(-z),
    # times w * (1 + (pos_weight - 1) y) for weighted / positive-weighted variants.
    logits_t = logits.transpose(1, 2)
    h_t = torch.sigmoid(logits_t) * torch.sigmoid(-logits_t)
    if spec.weight is not None:
        weight = spec.weight.to(dtype).expand(output_shape).reshape(n, n_outputs)
        h_t = h_t * weight.T
    if spec.pos_weight is not None:
        y_t = targets.reshape(batches, n, n_outputs).to(dtype).transpose(1, 2)
        pos_weight = spec.pos_weight.to(dtype).expand(output_shape).reshape(n, n_outputs)
        h_t = h_t * (1.0 + (pos_weight.T - 1.0) * y_t)
    return FactoredCurvature(h_t, scale * scale)
