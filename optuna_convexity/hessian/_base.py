"""The base classes of the per-batch estimators of the Frobenius norm of the loss's Hessian.

:class:`BaseHessianNormEstimator` turns a model into a :class:`BatchScorer`; the closed-form
estimators share :class:`HeadScorer` (one forward pass with the last layer hooked) and the
precision helpers below. Each estimator family has its own module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from collections.abc import Iterator
import contextlib
from typing import Any

import torch
from torch import nn

from optuna_convexity.hessian._head import HeadCall
from optuna_convexity.hessian._head import HeadCapture
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._targets import ClassIndexCheck


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


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
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


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """All elements as one vector, in float32 or wider."""
    dtype = compute_dtype(tensor)
    return (tensor if tensor.dtype == dtype else tensor.to(dtype)).reshape(-1)


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``(..., features)`` in float32 or wider, as ``(rows, features)``; no copy if possible."""
    dtype = compute_dtype(tensor)
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor if tensor.dim() == 2 else tensor.reshape(-1, tensor.shape[-1])


_ones: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def one(like: torch.Tensor) -> torch.Tensor:
    """A cached 0-d tensor 1, to fuse ``+ 1`` into ``addmm``."""
    key = (like.dtype, like.device)
    if key not in _ones:
        _ones[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return _ones[key]


def check_outputs(outputs: Any) -> None:
    """The model must return the tensor the loss takes."""
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"The model returned a {type(outputs).__name__}; the estimators need a tensor of "
            "outputs. Wrap the model so that it returns the tensor loss_fn takes."
        )


def check_loss_accepts(loss_fn: LossFunction, outputs: Any, targets: torch.Tensor) -> None:
    """Fail early, with the shapes in the message, if the model or the loss rejects a batch."""
    check_outputs(outputs)
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


def forward(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], index: int) -> Any:
    """``model(*args, **kwargs)``; a model that rejects the batch's inputs (shape, dtype, device,
    signature) fails with the inputs and the model's parameters described."""
    try:
        return model(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError) as error:
        inputs = [_describe(value) for value in args] + [
            f"{key}={_describe(value)}" for key, value in kwargs.items()
        ]
        parameter = next(iter(model.parameters()), None)
        held = (
            f"its parameters are {parameter.dtype} on {parameter.device}"
            if parameter is not None
            else "it has no parameters"
        )
        called = ", ".join(inputs)
        raise ValueError(
            f"The model failed on batch {index} of the loader, called as model({called}) "
            f"({held}): {error}. The loader must yield (inputs, targets) with the inputs the "
            "model is trained on (shape and dtype); batches are moved to the model's device."
        ) from error


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<{value.dtype} tensor of shape {tuple(value.shape)}>"
    return f"<{type(value).__name__}>"


class HeadScorer(BatchScorer):
    """Shared work of the closed-form estimators: one forward pass with the head hooked."""

    def __init__(self, model: nn.Module, loss_fn: LossFunction, last_layer: LastLayer) -> None:
        self._model = model
        self._loss_fn = loss_fn
        self._capture = HeadCapture(model, last_layer).__enter__()
        self._checks: list[tuple[torch.Tensor, str]] = []
        self._class_indices = ClassIndexCheck(loss_fn)
        self._values: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._n_batches = 0

    def close(self) -> None:
        self._capture.__exit__(None, None, None)

    def losses(self) -> torch.Tensor:
        return torch.stack(self._losses)

    def deferred_checks(self) -> list[tuple[torch.Tensor, str]]:
        return self._checks + self._class_indices.deferred_checks()

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any], targets: torch.Tensor) -> None:
        with torch.no_grad():
            self._capture.armed = True
            try:
                outputs = forward(self._model, args, kwargs, self._n_batches)
            finally:
                self._capture.armed = False
            call = self._capture.pop()
            if self._n_batches == 0:
                check_outputs(outputs)
                self._check_targets(outputs, targets)
                targets = self._class_indices.screen(outputs, targets)
                # The model's structure first: a loss that rejects raw logits (BCELoss) is a
                # missing link (sigmoid), which that check names.
                self._check_first_batch(call, outputs)
                check_loss_accepts(self._loss_fn, outputs, targets)
            else:
                self._check_targets(outputs, targets)
                targets = self._class_indices.screen(outputs, targets)
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
