"""The strong-convexity supremum: the largest per-batch Hessian-norm estimate."""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import math
from typing import Any

import torch
from torch import nn

from optuna_convexity.hessian._arguments import count
from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._batches import model_device
from optuna_convexity.hessian._batches import to_device
from optuna_convexity.hessian._batches import unpack_batch
from optuna_convexity.hessian._estimators import get_estimator
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._model_state import evaluation_mode
from optuna_convexity.hessian._model_state import preserved_rng


@dataclasses.dataclass(frozen=True)
class StrongConvexity:
    """The result of :func:`strong_convexity`.

    Attributes:
        mu:
            The supremum over the scored batches of the per-batch estimate of
            ``||nabla^2 L_B||_F``, ignoring non-finite batches; ``nan`` if no batch was finite.
        batch_norms:
            The per-batch estimates, in the loader's order (``nan`` where non-finite).
        n_batches:
            Batches scored.
        n_nonfinite:
            Batches whose estimate was ``nan`` or infinite (e.g. NaN model outputs); they are
            left out of ``mu``.
        n_examples:
            Examples scored.
        estimator:
            A description of the estimator and its settings, e.g. ``"last_layer"``.
        loss:
            The mean of ``loss_fn`` over the scored batches, weighted by their sizes, from the
            same forward passes (on the training loader: the training loss of the model as it
            is, in eval mode); ``nan`` if it is not finite or the estimator records no loss.
    """

    mu: float
    batch_norms: tuple[float, ...]
    n_batches: int
    n_nonfinite: int
    n_examples: int
    estimator: str
    loss: float = math.nan

    def __float__(self) -> float:
        return self.mu


def strong_convexity(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFunction,
    *,
    estimator: str | BaseHessianNormEstimator = "last_layer",
    last_layer: LastLayer = None,
    max_batches: int | None = None,
    max_examples: int | None = None,
) -> StrongConvexity:
    """Score a model by the supremum over mini-batches of its loss's Hessian norm.

    For each batch ``B`` the estimator gives ``mu_B ~ ||nabla^2 L_B||_F`` (``L_B`` the loss
    ``loss_fn(model(inputs), targets)``, a mean over the batch); the score is
    ``mu = max_B mu_B``. Small values indicate a flat loss, which the method prefers.

    Everything runs on the model's device: batches are moved there, per-batch values stay
    there, and the host synchronises once, after the last batch. The model is evaluated in
    eval mode and left exactly as found: each submodule's train/eval mode, parameters,
    ``.grad``, ``requires_grad`` flags and buffers (BatchNorm statistics) are unchanged, and so
    are the global CPU and CUDA random number generators. It works inside or outside
    ``torch.no_grad()`` and ``torch.autocast`` (the closed forms compute in float32).

    Args:
        model:
            Any ``nn.Module``. The closed-form estimators need its output to come from a
            final ``nn.Linear`` (found automatically with forward hooks).
        loader:
            An iterable of ``(inputs, targets)`` batches, e.g. a ``DataLoader``; ``inputs`` may
            be a tensor, a tuple of tensors (``model(*inputs)``) or a dict (``model(**inputs)``).
        loss_fn:
            The training loss, ``loss_fn(outputs, targets) -> scalar``.
        estimator:
            ``"last_layer"`` (exact, last layer; the default), ``"hutchinson"`` (whole network,
            stochastic), ``"paper"`` (the authors' scale-dependent closed form), or an
            estimator instance with custom settings.
        last_layer:
            The ``nn.Linear`` to treat as the last layer (the module or its name in
            ``model.named_modules()``); by default the last one the forward pass calls.
        max_batches:
            Score at most this many batches.
        max_examples:
            Stop once this many examples have been scored (whole batches).

    Returns:
        A :class:`StrongConvexity` with ``mu`` and per-batch details.

    Raises:
        ValueError: If the loader is empty, the loss or model does not fit the estimator, or
            the targets do not fit the outputs; the message names the fix.

    Example:

        .. code-block:: python

            import torch
            from torch.utils.data import DataLoader, TensorDataset
            from optuna_convexity.hessian import strong_convexity

            model = torch.nn.Sequential(
                torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
            )
            data = TensorDataset(torch.randn(512, 20), torch.randint(0, 4, (512,)))
            score = strong_convexity(model, DataLoader(data, batch_size=128),
                                     torch.nn.CrossEntropyLoss())
            print(score.mu, score.n_batches)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    if not isinstance(loader, Iterable) or isinstance(loader, (str, bytes, torch.Tensor)):
        raise TypeError(
            f"loader must be an iterable of (inputs, targets) batches, e.g. a "
            f"torch.utils.data.DataLoader or a list of pairs; got {type(loader).__name__}."
        )
    max_batches = count("max_batches", max_batches, optional=True)
    max_examples = count("max_examples", max_examples, optional=True)
    chosen = get_estimator(estimator)
    device = model_device(model)
    if device.type == "meta":
        raise ValueError(
            "The model's parameters are on the meta device (shapes without values), so there "
            "is nothing to score. Materialise them first, e.g. model.to_empty(device=...) and "
            "load_state_dict(...), or build the model without device='meta'."
        )

    sizes: list[int] = []
    with evaluation_mode(model), preserved_rng(device):
        scorer = chosen.open(model, loss_fn, last_layer)
        try:
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                args, kwargs, targets = unpack_batch(batch, index)
                args, kwargs, targets = to_device((args, kwargs, targets), device)
                scorer.add(args, kwargs, targets)
                sizes.append(_batch_size(targets))
                if max_examples is not None and sum(sizes) >= max_examples:
                    break
            if not sizes:
                raise ValueError(
                    "The loader yielded no batches; strong_convexity needs at least one "
                    "(inputs, targets) batch. Check the dataset is not empty and drop_last."
                )
            checks = scorer.deferred_checks()
            # The one host synchronisation: every per-batch value and check at once.
            norms = scorer.results()
            losses = scorer.losses()
            summary = torch.cat(
                [norms]
                + [failed.to(norms.dtype)[None] for failed, _ in checks]
                + (
                    [_weighted_mean(losses, sizes).to(norms.dtype)[None]]
                    if losses is not None
                    else []
                )
            )
            summary = summary.to("cpu", torch.float64)
        finally:
            scorer.close()

    values = summary.tolist()
    batch_norms = values[: len(sizes)]
    for (_, message), failed in zip(checks, values[len(sizes) : len(sizes) + len(checks)]):
        if failed:
            raise ValueError(message)
    loss = values[len(sizes) + len(checks)] if len(values) > len(sizes) + len(checks) else math.nan
    finite = [value for value in batch_norms if math.isfinite(value)]
    return StrongConvexity(
        mu=max(finite) if finite else math.nan,
        batch_norms=tuple(value if math.isfinite(value) else math.nan for value in batch_norms),
        n_batches=len(batch_norms),
        n_nonfinite=len(batch_norms) - len(finite),
        n_examples=sum(sizes),
        estimator=chosen.describe(),
        loss=loss if math.isfinite(loss) else math.nan,
    )


def _weighted_mean(losses: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    weights = torch.tensor(sizes, dtype=losses.dtype, device=losses.device)
    return (losses * weights).sum() / weights.sum()


def _batch_size(targets: torch.Tensor) -> int:
    return int(targets.shape[0]) if targets.dim() > 0 else 1
