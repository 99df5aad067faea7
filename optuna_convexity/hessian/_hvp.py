"""Hessian-vector products of a mini-batch loss, for a stack of probe vectors.

Three strategies compute ``H V`` for probes ``V`` (one tensor per parameter, with a leading
probe dimension):

- ``"batched"``: reverse-over-reverse. One forward pass and one ``backward(create_graph=True)``
  per batch, then a single vectorised double backward over all probes
  (``torch.autograd.grad(..., is_grads_batched=True)``).
- ``"loop"``: the same graph, one double backward per probe (what PyHessian does). On CPUs it
  beats ``"batched"`` for convolutional networks, whose vectorised backward runs as slow
  grouped convolutions.
- ``"forward"``: forward-over-reverse with ``torch.func`` (``vmap(jvp(grad(L)))``), for the rare
  model whose operations lack double-backward formulas.

``"auto"`` (the default) splits the first batch's probes between ``"batched"`` and ``"loop"``,
times both on the same graph (no extra products) and keeps the faster for the rest of the
pass. If the model cannot be differentiated twice, it falls back to ``"forward"``.

No strategy writes ``.grad``, changes ``requires_grad`` or touches the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import logging
import time
from typing import Any
from typing import Literal
import warnings

import torch
from torch import nn


_logger = logging.getLogger(__name__)

Vectors = tuple[torch.Tensor, ...]
Strategy = Literal["auto", "batched", "loop", "forward"]
STRATEGIES = ("auto", "batched", "loop", "forward")


class HessianVectorProduct:
    """Hessian-vector products for the Hessian of ``loss_fn(model(inputs), targets)`` in the
    trainable parameters. One instance serves all batches of a pass and remembers the strategy
    ``"auto"`` chose."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        strategy: Strategy = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                f"{type(model).__name__} has no parameter with requires_grad=True; the Hessian "
                "is taken with respect to the trainable parameters."
            )
        self.model = model
        self.loss_fn = loss_fn
        self.names = tuple(name for name, _ in named)
        self.parameters = tuple(p for _, p in named)
        self.strategy: Strategy = strategy

    def bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], targets: torch.Tensor
    ) -> BoundHessian:
        """Fix a batch; its gradient graph is built on first use and reused."""
        return BoundHessian(
            self,
            tuple(_as_normal_tensor(a) for a in args),
            {key: _as_normal_tensor(value) for key, value in kwargs.items()},
            _as_normal_tensor(targets),
        )


class BoundHessian:
    """The Hessian ``H`` of one batch's loss: :meth:`products` gives ``H V``,
    :meth:`squared_norms` gives ``||H v_k||^2`` per probe without keeping the products."""

    def __init__(
        self,
        owner: HessianVectorProduct,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        targets: torch.Tensor,
    ) -> None:
        self._owner = owner
        self._args = args
        self._kwargs = kwargs
        self._targets = targets
        self._gradient: Sequence[torch.Tensor] | None = None

    def products(self, vectors: Vectors) -> Vectors:
        """``H V`` for a stack of probes ``V``."""
        return self._run(vectors, keep_products=True)  # type: ignore[return-value]

    def squared_norms(self, vectors: Vectors) -> torch.Tensor:
        """``||H v_k||^2`` for each probe, accumulated in float32 or wider."""
        return self._run(vectors, keep_products=False)  # type: ignore[return-value]

    __call__ = products

    def _graph(self) -> Sequence[torch.Tensor]:
        if self._gradient is None:
            owner = self._owner
            with torch.inference_mode(False), torch.enable_grad():
                loss = owner.loss_fn(owner.model(*self._args, **self._kwargs), self._targets)
                self._gradient = torch.autograd.grad(loss, owner.parameters, create_graph=True)
        return self._gradient

    def _run(self, vectors: Vectors, keep_products: bool) -> Vectors | torch.Tensor:
        owner = self._owner
        if owner.strategy != "forward":
            try:
                if owner.strategy == "auto":
                    return self._tune(vectors, keep_products)
                if owner.strategy == "batched":
                    return self._batched(vectors, keep_products)
                return self._loop(vectors, keep_products)
            except RuntimeError as error:
                if owner.strategy != "auto":
                    raise
                _logger.debug("Double backward failed (%s); using torch.func instead.", error)
                owner.strategy = "forward"
        products = self._forward_over_reverse(vectors)
        return products if keep_products else squared_norms(products)

    def _batched(self, vectors: Vectors, keep_products: bool) -> Vectors | torch.Tensor:
        grads = self._graph()
        with torch.inference_mode(False), torch.enable_grad():
            products = torch.autograd.grad(
                grads,
                self._owner.parameters,
                grad_outputs=vectors,
                retain_graph=True,
                is_grads_batched=True,
                materialize_grads=True,
            )
        products = tuple(p.detach() for p in products)
        return products if keep_products else squared_norms(products)

    def _loop(self, vectors: Vectors, keep_products: bool) -> Vectors | torch.Tensor:
        grads = self._graph()
        parameters = self._owner.parameters
        kept: list[Sequence[torch.Tensor]] = []
        norms: list[torch.Tensor] = []
        with torch.inference_mode(False), torch.enable_grad():
            for index in range(vectors[0].shape[0]):
                product = torch.autograd.grad(
                    grads,
                    parameters,
                    grad_outputs=tuple(v[index] for v in vectors),
                    retain_graph=True,
                    materialize_grads=True,
                )
                if keep_products:
                    kept.append(product)
                else:
                    norms.append(squared_norms(tuple(p.detach()[None] for p in product)))
        if not keep_products:
            return torch.cat(norms)
        return tuple(
            torch.stack([product[i] for product in kept]).detach() for i in range(len(parameters))
        )

    def _tune(self, vectors: Vectors, keep_products: bool) -> Vectors | torch.Tensor:
        """Run half the probes each way on the same graph; keep the faster per probe."""
        owner = self._owner
        n_probes = vectors[0].shape[0]
        if n_probes < 2:
            return self._batched(vectors, keep_products)
        self._graph()  # built before the clocks start: both strategies share it
        half = n_probes // 2
        device = vectors[0].device
        seconds = []
        parts = []
        for method, part in (
            (self._batched, tuple(v[:half] for v in vectors)),
            (self._loop, tuple(v[half:] for v in vectors)),
        ):
            _synchronize(device)
            start = time.perf_counter()
            parts.append(method(part, keep_products))
            _synchronize(device)
            seconds.append((time.perf_counter() - start) / part[0].shape[0])
        owner.strategy = "batched" if seconds[0] <= seconds[1] else "loop"
        _logger.debug(
            "Hessian-vector products: %.3g s/probe batched, %.3g s/probe in a loop; using %s.",
            seconds[0],
            seconds[1],
            owner.strategy,
        )
        if not keep_products:
            return torch.cat(parts)  # type: ignore[arg-type]
        return tuple(torch.cat([a, b]) for a, b in zip(parts[0], parts[1]))

    def _forward_over_reverse(self, vectors: Vectors) -> Vectors:
        owner = self._owner
        model, loss_fn, names = owner.model, owner.loss_fn, owner.names
        args, kwargs, targets = self._args, self._kwargs, self._targets
        primals = tuple(p.detach() for p in owner.parameters)

        def loss(*params: torch.Tensor) -> torch.Tensor:
            outputs = torch.func.functional_call(model, dict(zip(names, params)), args, kwargs)
            return loss_fn(outputs, targets)

        gradient = torch.func.grad(loss, argnums=tuple(range(len(primals))))

        def single(*tangents: torch.Tensor) -> Vectors:
            return tuple(torch.func.jvp(gradient, primals, tangents)[1])

        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # torch's forward-AD decompositions use torch.jit.script on first use and warn
            # about its deprecation; that warning concerns torch, not the caller.
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
            )
            return tuple(torch.func.vmap(single)(*vectors))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_normal_tensor(value: Any) -> Any:
    """Inference-mode tensors cannot take part in autograd; give autograd a normal copy."""
    if isinstance(value, torch.Tensor) and value.is_inference():
        with torch.inference_mode(False):
            return value.clone()
    return value


_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _rademacher(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """Uniform random signs, eight per random byte: an order of magnitude faster than
    ``bernoulli_`` with an explicit generator."""
    count = 1
    for size in shape:
        count *= size
    shifts = _BIT_SHIFTS.get(device)
    if shifts is None:
        shifts = _BIT_SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    random_bytes = torch.empty((count + 7) // 8, dtype=torch.uint8, device=device)
    random_bytes.random_(generator=generator)
    bits = torch.bitwise_and(random_bytes[:, None] >> shifts, 1).reshape(-1)[:count]
    return bits.to(dtype).mul_(2.0).sub_(1.0).reshape(shape)


def random_probes(
    parameters: Sequence[torch.Tensor],
    n_probes: int,
    distribution: str,
    generator: torch.Generator,
) -> Vectors:
    """``n_probes`` vectors with identity covariance, one tensor per parameter."""
    probes = []
    for p in parameters:
        shape = (n_probes, *p.shape)
        if distribution == "rademacher":
            probes.append(_rademacher(shape, p.dtype, p.device, generator))
        else:
            probes.append(torch.randn(shape, dtype=p.dtype, device=p.device, generator=generator))
    return tuple(probes)


def squared_norms(vectors: Vectors) -> torch.Tensor:
    """``||v_k||^2`` for each probe ``k``, accumulated in float32 or wider."""
    dtype = torch.promote_types(vectors[0].dtype, torch.float32)
    norms = torch.stack(
        [torch.linalg.vector_norm(v.flatten(start_dim=1), dim=1, dtype=dtype) for v in vectors]
    )
    return norms.square().sum(dim=0)


def flatten(vectors: Vectors) -> torch.Tensor:
    """Stack per-parameter probe tensors into one ``(n_probes, dimension)`` matrix."""
    return torch.cat([v.flatten(start_dim=1) for v in vectors], dim=1)


def unflatten(matrix: torch.Tensor, like: Sequence[torch.Tensor]) -> Vectors:
    """Inverse of :func:`flatten`."""
    pieces = []
    start = 0
    for p in like:
        pieces.append(matrix[:, start : start + p.numel()].reshape(matrix.shape[0], *p.shape))
        start += p.numel()
    return tuple(pieces)


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A private generator, so that probes never consume the user's global RNG stream."""
    generator = torch.Generator(device=device)
    if seed is None:
        import secrets

        seed = secrets.randbits(63)
    generator.manual_seed(seed)
    return generator
