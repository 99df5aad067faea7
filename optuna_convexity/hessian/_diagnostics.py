"""Sharpness diagnostics used by other work: the top eigenvalue and the trace of the Hessian.

Both are taken for the Hessian of the *dataset* loss over the batches of ``loader`` (each
batch's Hessian-vector product weighted by its size, so a loader of mean-reduced batch losses
gives the Hessian of the mean loss over all examples), like PyHessian's full-dataset mode.
"""

from __future__ import annotations

from collections.abc import Iterable
import math
from typing import Any

import torch
from torch import nn

from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._batches import model_device
from optuna_convexity.hessian._batches import to_device
from optuna_convexity.hessian._batches import unpack_batch
from optuna_convexity.hessian._hvp import HessianVectorProduct
from optuna_convexity.hessian._hvp import make_generator
from optuna_convexity.hessian._hvp import random_probes
from optuna_convexity.hessian._hvp import Vectors
from optuna_convexity.hessian._model_state import evaluation_mode
from optuna_convexity.hessian._model_state import preserved_rng


def _dataset_hvp(
    hvp: HessianVectorProduct,
    loader: Iterable[Any],
    device: torch.device,
    max_batches: int | None,
    vectors: Vectors,
) -> Vectors:
    """``sum_B n_B H_B V / sum_B n_B`` over the loader's batches."""
    total: list[torch.Tensor] | None = None
    count = 0
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        args, kwargs, targets = to_device(unpack_batch(batch, index), device)
        n = int(targets.shape[0]) if targets.dim() else 1
        products = hvp.bind(args, kwargs, targets)(vectors)
        if total is None:
            total = [p * n for p in products]
        else:
            for accumulated, p in zip(total, products):
                accumulated.add_(p, alpha=n)
        count += n
    if total is None:
        raise ValueError("The loader yielded no batches; the diagnostics need at least one.")
    return tuple(t / count for t in total)


def _dot(left: Vectors, right: Vectors) -> torch.Tensor:
    """Per-probe inner products, in float32 or wider."""
    dtype = torch.promote_types(left[0].dtype, torch.float32)
    return sum(  # type: ignore[return-value]
        (a.to(dtype) * b.to(dtype)).flatten(start_dim=1).sum(dim=1) for a, b in zip(left, right)
    )


def hessian_eigenvalue(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFunction,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    max_batches: int | None = None,
    seed: int | None = None,
) -> float:
    """The eigenvalue of largest magnitude of the loss's Hessian, by power iteration.

    Each iteration is one pass of Hessian-vector products over the loader; the iteration stops
    when the Rayleigh quotient changes by less than ``tol`` (relative) or after ``max_iter``
    passes. This is the sharpness measure PyHessian reports as the "top eigenvalue".

    Args:
        model: The network; left unchanged (see :func:`strong_convexity`).
        loader: ``(inputs, targets)`` batches.
        loss_fn: The loss, ``loss_fn(outputs, targets) -> scalar``.
        max_iter: Maximum number of power iterations.
        tol: Relative change of the eigenvalue estimate at which to stop.
        max_batches: Use only the first ``max_batches`` batches of each pass.
        seed: Seed of the private generator for the starting vector.

    Returns:
        The eigenvalue estimate.

    Example:

        .. code-block:: python

            import torch
            from optuna_convexity.hessian import hessian_eigenvalue

            model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
            )
            data = [(torch.randn(32, 4), torch.randint(0, 3, (32,)))]
            top = hessian_eigenvalue(model, data, torch.nn.CrossEntropyLoss(), seed=0)
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    if tol < 0:
        raise ValueError(f"tol must be non-negative, got {tol}.")
    device = model_device(model)
    with evaluation_mode(model), preserved_rng(device):
        hvp = HessianVectorProduct(model, loss_fn)
        generator = make_generator(hvp.parameters[0].device, seed)
        vector = random_probes(hvp.parameters, 1, "gaussian", generator)
        norm = _dot(vector, vector).sqrt()
        vector = tuple(v / norm for v in vector)
        eigenvalue = math.nan
        for _ in range(max_iter):
            product = _dataset_hvp(hvp, loader, device, max_batches, vector)
            estimate = float(_dot(vector, product))
            norm = _dot(product, product).sqrt()
            if float(norm) == 0.0:
                return 0.0
            vector = tuple(p / norm.to(p.dtype) for p in product)
            converged = math.isfinite(eigenvalue) and abs(estimate - eigenvalue) <= tol * (
                abs(eigenvalue) + 1e-12
            )
            eigenvalue = estimate
            if converged:
                break
    return eigenvalue


def hessian_trace(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFunction,
    *,
    n_probes: int = 32,
    max_batches: int | None = None,
    seed: int | None = None,
) -> float:
    """Hutchinson's estimate ``E[z^T H z]`` of the trace of the loss's Hessian.

    All ``n_probes`` Rademacher probes are evaluated together in one pass over the loader.

    Args:
        model: The network; left unchanged (see :func:`strong_convexity`).
        loader: ``(inputs, targets)`` batches.
        loss_fn: The loss, ``loss_fn(outputs, targets) -> scalar``.
        n_probes: Number of probe vectors.
        max_batches: Use only the first ``max_batches`` batches.
        seed: Seed of the private generator for the probes.

    Returns:
        The trace estimate.

    Example:

        .. code-block:: python

            import torch
            from optuna_convexity.hessian import hessian_trace

            model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
            )
            data = [(torch.randn(32, 4), torch.randint(0, 3, (32,)))]
            trace = hessian_trace(model, data, torch.nn.CrossEntropyLoss(), n_probes=64, seed=0)
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}.")
    device = model_device(model)
    with evaluation_mode(model), preserved_rng(device):
        hvp = HessianVectorProduct(model, loss_fn)
        generator = make_generator(hvp.parameters[0].device, seed)
        probes = random_probes(hvp.parameters, n_probes, "rademacher", generator)
        products = _dataset_hvp(hvp, loader, device, max_batches, probes)
        return float(_dot(probes, products).mean())
