"""Whole-network Hessian norms from Hessian-vector products (Hutchinson and Hutch++)."""

from __future__ import annotations

from typing import Any
from typing import Literal

import torch
from torch import nn

from optuna_convexity.hessian._arguments import count
from optuna_convexity.hessian._arguments import seed as checked_seed
from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._base import BatchScorer
from optuna_convexity.hessian._base import check_loss_accepts
from optuna_convexity.hessian._base import compute_dtype
from optuna_convexity.hessian._base import forward
from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._hvp import BoundHessian
from optuna_convexity.hessian._hvp import check_strategy
from optuna_convexity.hessian._hvp import flatten
from optuna_convexity.hessian._hvp import HessianVectorProduct
from optuna_convexity.hessian._hvp import make_generator
from optuna_convexity.hessian._hvp import random_probes
from optuna_convexity.hessian._hvp import Strategy
from optuna_convexity.hessian._hvp import unflatten
from optuna_convexity.hessian._hvp import Vectors
from optuna_convexity.hessian._targets import ClassIndexCheck


class HutchinsonEstimator(BaseHessianNormEstimator):
    r"""Whole-network ``||H||_F`` from Hessian-vector products: ``||H||_F^2 = E ||H z||^2``.

    Each of the ``n_probes`` probes ``z`` (Rademacher or Gaussian, identity covariance) costs
    one Hessian-vector product; see ``strategy`` for how the products are evaluated.

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
            backward for all probes), ``"loop"`` (one double backward per probe, as PyHessian
            does), ``"forward"`` (forward-over-reverse, ``vmap`` over the probes of
            ``torch.func.jvp`` of ``torch.func.grad``), or ``"auto"``: split the first batch's
            probes between the three, time each on its share (every product is used) and keep
            the one projected to be cheapest per batch (this adds a few device
            synchronisations on the first batch). In ``benchmarks/hessian_speed.py`` on a CPU
            it chose ``"batched"`` for the MLP and ``"loop"`` for the CNN.
        compile:
            Compile the forward-over-reverse products with ``torch.compile`` (needs
            ``strategy="forward"``). Compilation costs tens of seconds per model on a CPU,
            once per process and model; it pays off for long passes, not for one screening
            trial.

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
        compile: bool = False,
    ) -> None:
        check_strategy(strategy, compile)
        n_probes = count("n_probes", n_probes)
        if hutchpp and n_probes < 3:
            raise ValueError(
                f"Hutch++ splits its budget in three; n_probes must be at least 3, got {n_probes}."
            )
        if distribution not in ("rademacher", "gaussian"):
            raise ValueError(
                f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}."
            )
        self.n_probes = n_probes
        self.distribution = distribution
        self.hutchpp = hutchpp
        self.probe_batch_size = count("probe_batch_size", probe_batch_size, optional=True)
        self.seed = checked_seed("seed", seed, bits=63)
        self.strategy = strategy
        self.compile = compile

    def describe(self) -> str:
        method = "hutch++" if self.hutchpp else "hutchinson"
        return f"{method}(n_probes={self.n_probes}, {self.distribution})"

    def __repr__(self) -> str:
        return (
            f"HutchinsonEstimator(n_probes={self.n_probes}, distribution={self.distribution!r}, "
            f"hutchpp={self.hutchpp}, probe_batch_size={self.probe_batch_size}, seed={self.seed}, "
            f"strategy={self.strategy!r}, compile={self.compile})"
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
        self._hvp = HessianVectorProduct(
            model, loss_fn, estimator.strategy, compile=estimator.compile
        )
        device = self._hvp.parameters[0].device
        self._generator = make_generator(device, estimator.seed)
        self._probes: tuple[Vectors, ...] | None = None
        self._values: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._class_indices = ClassIndexCheck(loss_fn)

    def deferred_checks(self) -> list[tuple[torch.Tensor, str]]:
        return self._class_indices.deferred_checks()

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
            outputs = forward(self._model, args, kwargs, len(self._values))
            targets = self._class_indices.screen(outputs, targets)
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
        dtype = compute_dtype(sketch[0])
        basis, _ = torch.linalg.qr(flatten(sketch).T.to(dtype))
        basis_vectors = unflatten(basis.T.to(sketch[0].dtype), self._hvp.parameters)
        exact = self._squared_norms(hessian, basis_vectors).sum()
        products = flatten(self._products(hessian, residual_probes)).to(dtype)
        remainder = products - (products @ basis) @ basis.T
        self._values.append(exact + remainder.square().sum(dim=1).mean())

    def results(self) -> torch.Tensor:
        return torch.stack(self._values).sqrt()
