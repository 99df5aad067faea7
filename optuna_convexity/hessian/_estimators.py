"""Per-batch estimators of the Frobenius norm of the Hessian of the mean loss."""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Iterator
import contextlib
from typing import Any
from typing import Literal

import torch
from torch import nn

from optuna_convexity.hessian._head import HeadCall
from optuna_convexity.hessian._head import HeadCapture
from optuna_convexity.hessian._head import is_view_of
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._hvp import BoundHessian
from optuna_convexity.hessian._hvp import flatten
from optuna_convexity.hessian._hvp import HessianVectorProduct
from optuna_convexity.hessian._hvp import make_generator
from optuna_convexity.hessian._hvp import random_probes
from optuna_convexity.hessian._hvp import STRATEGIES
from optuna_convexity.hessian._hvp import Strategy
from optuna_convexity.hessian._hvp import unflatten
from optuna_convexity.hessian._hvp import Vectors
from optuna_convexity.hessian._losses import check_targets
from optuna_convexity.hessian._losses import curvature_of
from optuna_convexity.hessian._losses import describe_loss
from optuna_convexity.hessian._losses import LossSpec
from optuna_convexity.hessian._losses import SUPPORTED_LOSSES


LossFunction = Callable[[Any, torch.Tensor], torch.Tensor]


class BatchScorer(abc.ABC):
    """Scores the batches of one :func:`~optuna_convexity.hessian.strong_convexity` call.

    :meth:`add` takes one batch and must not synchronise with the host; implementations may
    defer work to evaluate several batches at once. :meth:`results` returns one value per batch
    added, in order, as a tensor on the model's device. Checks that need a value are returned
    by :meth:`deferred_checks` and evaluated once, after the last batch.
    """

    @abc.abstractmethod
    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any], targets: torch.Tensor) -> None:
        """Score (or queue) one batch."""

    @abc.abstractmethod
    def results(self) -> torch.Tensor:
        """The estimates of all batches added so far, shape ``(n_batches,)``."""

    def losses(self) -> torch.Tensor | None:
        """The loss of each batch added so far, shape ``(n_batches,)``, on the model's device.

        Scorers that run the model's forward pass anyway record ``loss_fn(outputs, targets)``
        from it; ``None`` if this scorer does not record losses.
        """
        return None

    def deferred_checks(self) -> list[tuple[torch.Tensor, str]]:
        """``(failed, message)`` pairs: raise ``ValueError(message)`` if ``failed`` is true."""
        return []

    def close(self) -> None:
        """Release hooks and buffers."""


class BaseHessianNormEstimator(abc.ABC):
    """Base class of the per-batch estimators of ``||nabla^2 L_B||_F``.

    An estimator turns one mini-batch ``B`` into an estimate of the Frobenius norm of the
    Hessian of the batch's loss. :func:`~optuna_convexity.hessian.strong_convexity` takes the
    supremum over batches. Pass an instance, or one of the names ``"paper"``, ``"last_layer"``
    and ``"hutchinson"`` for an instance with default settings.
    """

    #: Short name stored with every score (``convexity:estimator`` in Optuna trials).
    name: str = ""

    @abc.abstractmethod
    def open(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> BatchScorer:
        """Prepare to score batches of ``model`` (hooks, generators); see :class:`BatchScorer`."""

    def describe(self) -> str:
        """A human-readable summary of the estimator and its settings."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32, or wider if the model already is: never bf16/fp16 for the squared Gram."""
    return torch.promote_types(tensor.dtype, torch.float32)


@contextlib.contextmanager
def full_precision(device: torch.device | None) -> Iterator[None]:
    """Disable autocast (if enabled) so that the closed forms compute in float32 or wider."""
    if device is None:
        device = torch.device("cpu")
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """All elements as one vector, in float32 or wider."""
    dtype = _compute_dtype(tensor)
    return (tensor if tensor.dtype == dtype else tensor.to(dtype)).reshape(-1)


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``(..., features)`` in float32 or wider, as ``(rows, features)``; no copy if possible."""
    dtype = _compute_dtype(tensor)
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor if tensor.dim() == 2 else tensor.reshape(-1, tensor.shape[-1])


_ones: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _one(like: torch.Tensor) -> torch.Tensor:
    """A cached 0-d tensor 1, to fuse ``+ 1`` into ``addmm``."""
    key = (like.dtype, like.device)
    if key not in _ones:
        _ones[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return _ones[key]


def check_loss_accepts(loss_fn: LossFunction, outputs: Any, targets: torch.Tensor) -> None:
    """Fail early, with the shapes in the message, if the model or the loss rejects a batch."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"The model returned a {type(outputs).__name__}; the estimators need a tensor of "
            "outputs. Wrap the model so that it returns the tensor loss_fn takes."
        )
    try:
        loss = loss_fn(outputs, targets)
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        raise ValueError(
            f"loss_fn(outputs, targets) failed on the first batch (outputs of shape "
            f"{tuple(outputs.shape)} and dtype {outputs.dtype}, targets of shape "
            f"{tuple(targets.shape)} and dtype {targets.dtype}): {error}"
        ) from error
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar; it returned {shape}. Use reduction='mean'."
        )


class _HeadScorer(BatchScorer):
    """Shared work of the closed-form estimators: one forward pass with the head hooked."""

    def __init__(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> None:
        self._model = model
        self._loss_fn = loss_fn
        self._capture = HeadCapture(model, last_layer).__enter__()
        self._checks: list[tuple[torch.Tensor, str]] = []
        self._values: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._n_batches = 0

    def close(self) -> None:
        self._capture.__exit__(None, None, None)

    def losses(self) -> torch.Tensor:
        return torch.stack(self._losses)

    def deferred_checks(self) -> list[tuple[torch.Tensor, str]]:
        return self._checks

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any], targets: torch.Tensor) -> None:
        with torch.no_grad():
            self._capture.armed = True
            try:
                outputs = self._model(*args, **kwargs)
            finally:
                self._capture.armed = False
            call = self._capture.pop()
            if self._n_batches == 0:
                if isinstance(outputs, torch.Tensor):
                    self._check_targets(outputs, targets)
                check_loss_accepts(self._loss_fn, outputs, targets)
                self._check_first_batch(call, outputs)
            else:
                self._check_targets(outputs, targets)
            self._losses.append(self._loss_fn(outputs, targets).detach().float())
            if torch.is_autocast_enabled(outputs.device.type):
                with torch.autocast(device_type=outputs.device.type, enabled=False):
                    self._add(call, outputs, targets)
            else:  # the common case, without a context manager's per-batch cost
                self._add(call, outputs, targets)
        self._n_batches += 1

    def _check_first_batch(self, call: HeadCall, outputs: torch.Tensor) -> None:
        """Checks of the model's structure, run once."""

    def _check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Shape checks of every batch's targets, before the loss sees them."""

    @abc.abstractmethod
    def _add(self, call: HeadCall, outputs: torch.Tensor, targets: torch.Tensor) -> None: ...


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


class _PaperScorer(_HeadScorer):
    def __init__(
        self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer, variant: str
    ) -> None:
        super().__init__(model, loss_fn, last_layer)
        self._variant = variant
        self._spec = describe_loss(loss_fn)
        self._weight_squared: torch.Tensor | None = None

    def _add(self, call: HeadCall, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self._weight_squared is None:
            weight = _flat(call.layer.weight.detach())
            self._weight_squared = torch.dot(weight, weight)
        activations = _flat(call.inputs)
        squared = torch.dot(activations, activations)
        if self._variant == "output":
            logits = _as_matrix(call.outputs)
            kind = self._spec.kind if self._spec is not None else "squared"
            if kind == "softmax":
                probabilities = torch.softmax(logits.T, dim=0)
            elif kind == "sigmoid":
                probabilities = torch.sigmoid(logits)
            else:
                probabilities = logits
            probabilities = _flat(probabilities)
            squared = squared * torch.dot(probabilities, probabilities)
        self._values.append(squared)

    def results(self) -> torch.Tensor:
        assert self._weight_squared is not None
        return (torch.stack(self._values) / self._weight_squared).sqrt()


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
    evaluated in groups of ``group_size`` with batched products; batches of more than 2048
    examples alone, in row blocks of ``chunk_size``, so memory stays ``O(chunk_size * n)``.
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
            Rows of the ``n x n`` Gram matrix formed at once for batches of more than 2048
            examples; ``2**22 / n`` by default.
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
        for name, value in (("chunk_size", chunk_size), ("group_size", group_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        self.chunk_size = chunk_size
        self.group_size = group_size

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


class _LastLayerScorer(_HeadScorer):
    """Evaluates ``||H_B||_F^2 = sum_ij K_ij (a~_i . a~_j)^2`` for groups of batches.

    Each batch's Gram matrix goes straight into a slot of a reused ``(B, n, n)`` buffer with
    ``addmm``, and its logits and targets are kept (references, no copy). When ``B`` batches of
    one shape are queued, their curvatures and norms are computed with batched operations, so
    the fixed cost of each tensor operation is paid once per group rather than once per batch.
    Batches of more than 2048 rows are evaluated alone, in row blocks.
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
        dtype = _compute_dtype(logits)
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
        activations = _as_matrix(call.inputs)
        logits = _as_matrix(call.outputs)
        rows = activations.shape[0]
        if rows > _GROUP_MAX_ROWS:
            self._flush()
            self._values.append(self._chunked(activations, logits, targets, outputs.shape))
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
            torch.addmm(_one(activations), activations, activations.T, out=slot)
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
        self._values.append(curvature.frobenius_squared(gram, slice(None)))
        self._pending.clear()

    def _chunked(
        self,
        activations: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        output_shape: torch.Size,
    ) -> torch.Tensor:
        """One large batch, ``chunk_size`` rows of the Gram matrix at a time."""
        n = activations.shape[0]
        chunk = self._chunk_size or max(1, _GRAM_BUDGET // n)
        curvature = curvature_of(self._spec, logits[None], targets[None], output_shape)
        total = activations.new_zeros(1)
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            if self._with_bias:
                gram = torch.addmm(_one(activations), activations[rows], activations.T)
            else:
                gram = activations[rows] @ activations.T
            total = total + curvature.frobenius_squared(gram.square_()[None], rows)
        return total

    def results(self) -> torch.Tensor:
        device = self._gram_buffer.device if self._gram_buffer is not None else None
        with torch.no_grad(), full_precision(device):
            self._flush()
        return torch.cat([v.reshape(-1) for v in self._values]).sqrt()


class HutchinsonEstimator(BaseHessianNormEstimator):
    r"""Whole-network ``||H||_F`` from Hessian-vector products: ``||H||_F^2 = E ||H z||^2``.

    Each of the ``n_probes`` probes ``z`` (Rademacher or Gaussian, identity covariance) costs
    one Hessian-vector product on the batch's gradient graph, which is built once per batch;
    see ``strategy`` for how the products are evaluated.

    With ``hutchpp=True`` the budget is split as in Hutch++ (Meyer et al., 2021): a third sketches
    the top of the spectrum ``Q = orth(H S)``, a third computes ``||H Q||_F^2`` exactly and the
    rest estimates the remainder ``||(I - QQ^T) H||_F^2`` with probes, which lowers the variance
    when the spectrum decays.

    .. note::
        The supremum over batches of a *noisy* estimate is biased upwards; the bias shrinks
        as ``n_probes`` grows. Prefer :class:`LastLayerEstimator` where it applies, and report
        the probe count alongside scores (``describe()`` includes it).

    Args:
        n_probes:
            Hessian-vector products per batch (at least 3 with ``hutchpp``).
        distribution:
            ``"rademacher"`` (lower variance) or ``"gaussian"``.
        hutchpp:
            Use the Hutch++ variance reduction.
        probe_batch_size:
            Probes evaluated at once (memory grows with it); all of them by default.
        seed:
            Seed of the estimator's private generator; the global RNG is never used.
        strategy:
            How Hessian-vector products are computed: ``"batched"`` (one vectorised double
            backward for all probes), ``"loop"`` (one double backward per probe),
            ``"forward"`` (``torch.func`` forward-over-reverse), or ``"auto"``: split the first
            batch's probes between ``"batched"`` and ``"loop"``, time both on the same graph
            and keep the faster (this adds two device synchronisations on the first batch).

    Example:

        .. code-block:: python

            import torch
            from optuna_convexity.hessian import HutchinsonEstimator, strong_convexity

            model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
            )
            data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
            mu = strong_convexity(model, data, torch.nn.CrossEntropyLoss(),
                                  estimator=HutchinsonEstimator(n_probes=32, seed=0)).mu
    """

    name = "hutchinson"

    def __init__(
        self,
        n_probes: int = 16,
        *,
        distribution: Literal["rademacher", "gaussian"] = "rademacher",
        hutchpp: bool = False,
        probe_batch_size: int | None = None,
        seed: int | None = None,
        strategy: Strategy = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        if not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
        if hutchpp and n_probes < 3:
            raise ValueError(
                f"Hutch++ splits its budget in three; n_probes must be at least 3, got {n_probes}."
            )
        if distribution not in ("rademacher", "gaussian"):
            raise ValueError(
                f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}."
            )
        if probe_batch_size is not None and (
            not isinstance(probe_batch_size, int) or probe_batch_size < 1
        ):
            raise ValueError(
                f"probe_batch_size must be a positive integer or None, got {probe_batch_size!r}."
            )
        self.n_probes = n_probes
        self.distribution = distribution
        self.hutchpp = hutchpp
        self.probe_batch_size = probe_batch_size
        self.seed = seed
        self.strategy = strategy

    def describe(self) -> str:
        method = "hutch++" if self.hutchpp else "hutchinson"
        return f"{method}(n_probes={self.n_probes}, {self.distribution})"

    def __repr__(self) -> str:
        return (
            f"HutchinsonEstimator(n_probes={self.n_probes}, distribution={self.distribution!r}, "
            f"hutchpp={self.hutchpp}, probe_batch_size={self.probe_batch_size}, seed={self.seed}, "
            f"strategy={self.strategy!r})"
        )

    def open(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> BatchScorer:
        return _HutchinsonScorer(model, loss_fn, self)


class _HutchinsonScorer(BatchScorer):
    def __init__(
        self, model: nn.Module, loss_fn: LossFunction, estimator: HutchinsonEstimator
    ) -> None:
        self._model = model
        self._loss_fn = loss_fn
        self._estimator = estimator
        self._hvp = HessianVectorProduct(model, loss_fn, estimator.strategy)
        device = self._hvp.parameters[0].device
        self._generator = make_generator(device, estimator.seed)
        self._probes: tuple[Vectors, ...] | None = None
        self._values: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []

    def _chunks(self, probes: Vectors) -> list[Vectors]:
        n = probes[0].shape[0]
        step = self._estimator.probe_batch_size or n
        return [tuple(v[s : s + step] for v in probes) for s in range(0, n, step)]

    def _products(self, hessian: BoundHessian, probes: Vectors) -> Vectors:
        parts = [hessian.products(chunk) for chunk in self._chunks(probes)]
        return tuple(torch.cat([part[i] for part in parts]) for i in range(len(probes)))

    def _squared_norms(self, hessian: BoundHessian, probes: Vectors) -> torch.Tensor:
        return torch.cat([hessian.squared_norms(chunk) for chunk in self._chunks(probes)])

    def _draw(self, n: int) -> Vectors:
        return random_probes(
            self._hvp.parameters, n, self._estimator.distribution, self._generator
        )

    def losses(self) -> torch.Tensor:
        return torch.stack(self._losses)

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any], targets: torch.Tensor) -> None:
        with torch.no_grad():
            outputs = self._model(*args, **kwargs)
            if self._probes is None:
                check_loss_accepts(self._loss_fn, outputs, targets)
            # One forward pass more than the ~2 k passes of the products, for the loss value.
            self._losses.append(self._loss_fn(outputs, targets).detach().float())
        if self._probes is None:
            # One set of probes per pass (common random numbers): every batch's estimate is
            # unbiased, and the supremum is not inflated by independent noise per batch.
            k = self._estimator.n_probes
            if self._estimator.hutchpp:
                sketch_size = k // 3
                self._probes = (self._draw(sketch_size), self._draw(k - 2 * sketch_size))
            else:
                self._probes = (self._draw(k),)
        hessian = self._hvp.bind(args, kwargs, targets)
        if not self._estimator.hutchpp:
            self._values.append(self._squared_norms(hessian, self._probes[0]).mean())
            return
        sketch_probes, residual_probes = self._probes
        sketch = self._products(hessian, sketch_probes)
        dtype = _compute_dtype(sketch[0])
        basis, _ = torch.linalg.qr(flatten(sketch).T.to(dtype))
        basis_vectors = unflatten(basis.T.to(sketch[0].dtype), self._hvp.parameters)
        exact = self._squared_norms(hessian, basis_vectors).sum()
        products = flatten(self._products(hessian, residual_probes)).to(dtype)
        remainder = products - (products @ basis) @ basis.T
        self._values.append(exact + remainder.square().sum(dim=1).mean())

    def results(self) -> torch.Tensor:
        return torch.stack(self._values).sqrt()


_NAMED: dict[str, Callable[[], BaseHessianNormEstimator]] = {
    "paper": PaperEstimator,
    "last_layer": LastLayerEstimator,
    "hutchinson": HutchinsonEstimator,
}

ESTIMATOR_NAMES = tuple(_NAMED)


def get_estimator(estimator: str | BaseHessianNormEstimator) -> BaseHessianNormEstimator:
    """Turn a name into an estimator with default settings; pass instances through."""
    if isinstance(estimator, BaseHessianNormEstimator):
        return estimator
    if isinstance(estimator, str) and estimator in _NAMED:
        return _NAMED[estimator]()
    raise ValueError(
        f"Unknown estimator {estimator!r}. Use one of {', '.join(map(repr, _NAMED))}, or an "
        "instance such as HutchinsonEstimator(n_probes=64)."
    )
