"""Hessian-vector products of a mini-batch loss, for a stack of probe vectors.

Three strategies compute ``H V`` for probes ``V`` (one tensor per parameter, with a leading
probe dimension):

- ``"batched"``: reverse-over-reverse. One forward pass and one ``backward(create_graph=True)``
  per batch, then a single vectorised double backward over all probes
  (``torch.autograd.grad(..., is_grads_batched=True)``).
- ``"loop"``: the same graph, one double backward per probe (what PyHessian does).
- ``"forward"``: forward-over-reverse with ``torch.func``: ``jvp`` of ``grad`` of the loss of
  ``functional_call(model, ...)``, vectorised over the probes with ``vmap``. It keeps no
  double-backward graph, and the primal forward and backward run once for all probes. With
  ``compile=True`` this function is compiled with ``torch.compile`` (a one-off cost of tens of
  seconds per model on a CPU; worth it for long passes, not for one screening trial).

``"auto"`` (the default) measures instead of assuming. On the first batch it builds the
double-backward graph (timed), gives one probe to ``"forward"`` untimed (its first call pays
torch's one-off set-up) and splits the remaining probes into three parts, one per strategy,
each timed on its own part; every product is used, so the measurement costs no extra products.
It projects each strategy's cost for a whole batch of ``k`` probes (graph + ``k`` per-probe
products for the two reverse-over-reverse strategies, ``k / m`` times the measured call for
``"forward"``, which over-counts its shared forward and backward, a bias against it) and keeps
the cheapest for the rest of the pass. What it chose in the run recorded in
``benchmarks/results/hessian_speed.txt`` (one thread of a heavily shared 2-core CPU, torch
2.13, batches of 128, k = 16): ``"batched"`` for the MLP and ``"loop"`` for the CNN; forcing
``"forward"`` took 0.83 of PyHessian's time on the MLP (``"auto"``: 0.86) and 2.6 times it on
the CNN.
A call with fewer than 4 probes runs ``"batched"`` and leaves the choice to a later call. If
the model cannot be differentiated twice, ``"auto"`` uses ``"forward"``; if ``torch.func``
cannot transform it (e.g. a legacy ``autograd.Function``), it leaves ``"forward"`` out.

No strategy writes ``.grad``, changes ``requires_grad`` or touches the parameters or buffers:
``functional_call`` swaps detached views of the parameters in and restores the originals.
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

#: ``(parameters, probes, args, kwargs, targets) -> H V`` (or ``||H v_k||^2`` per probe).
_FunctionalProducts = Callable[
    [dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[Any, ...], dict[str, Any], Any],
    Any,
]


def check_strategy(strategy: object, compile: bool) -> None:
    """A ``ValueError`` naming the fix for an unknown strategy or ``compile`` without
    ``strategy="forward"``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if compile and strategy != "forward":
        raise ValueError(
            "compile=True compiles the forward-over-reverse products; pass "
            f"strategy='forward' with it (got strategy={strategy!r})."
        )


class HessianVectorProduct:
    """Hessian-vector products for the Hessian of ``loss_fn(model(inputs), targets)`` in the
    trainable parameters. One instance serves all batches of a pass and remembers the strategy
    ``"auto"`` chose."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        strategy: Strategy = "auto",
        *,
        compile: bool = False,
    ) -> None:
        check_strategy(strategy, compile)
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
        self.compile = compile
        self._functional: dict[bool, _FunctionalProducts] = {}
        #: Seconds per batch that ``"auto"`` projected for each strategy it measured.
        self.measured: dict[Strategy, float] = {}

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

    def functional(self, keep_products: bool) -> _FunctionalProducts:
        """The forward-over-reverse products as one function (compiled if asked), cached."""
        if keep_products not in self._functional:
            function = _functional_products(self.model, self.loss_fn, keep_products)
            if self.compile:
                # Dynamo keeps the compiled code with the code object and guards on the model
                # and loss: later passes over the same model reuse it without recompiling.
                function = torch.compile(function, dynamic=False)
            self._functional[keep_products] = function
        return self._functional[keep_products]


def _functional_products(
    model: nn.Module, loss_fn: Callable[..., torch.Tensor], keep_products: bool
) -> _FunctionalProducts:
    """``vmap`` over the probes of ``jvp(grad(loss))``: products, or their squared norms."""

    def loss(
        parameters: dict[str, torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        targets: Any,
    ) -> torch.Tensor:
        # Parameters not passed (frozen ones) and buffers are the module's own, read only:
        # the model is in eval mode, so BatchNorm reads its running statistics.
        return loss_fn(torch.func.functional_call(model, parameters, args, kwargs), targets)

    gradient = torch.func.grad(loss)

    def product(
        parameters: dict[str, torch.Tensor],
        tangent: dict[str, torch.Tensor],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        targets: Any,
    ) -> Any:
        def of_parameters(values: dict[str, torch.Tensor]) -> Any:
            return gradient(values, args, kwargs, targets)

        hv = torch.func.jvp(of_parameters, (parameters,), (tangent,))[1]
        if keep_products:
            return hv
        dtype = torch.promote_types(next(iter(hv.values())).dtype, torch.float32)
        return sum(torch.linalg.vector_norm(v, dtype=dtype).square() for v in hv.values())

    return torch.func.vmap(product, in_dims=(None, 0, None, None, None))


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
        if owner.strategy == "auto":
            return self._tune(vectors, keep_products)
        if owner.strategy == "batched":
            return self._batched(vectors, keep_products)
        if owner.strategy == "loop":
            return self._loop(vectors, keep_products)
        return self._forward_over_reverse(vectors, keep_products)

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

    def _forward_over_reverse(
        self, vectors: Vectors, keep_products: bool
    ) -> Vectors | torch.Tensor:
        owner = self._owner
        parameters = {name: p.detach() for name, p in zip(owner.names, owner.parameters)}
        tangents = dict(zip(owner.names, vectors))
        function = owner.functional(keep_products)
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # torch's forward-AD decompositions use torch.jit.script on first use and warn
            # about its deprecation; that warning concerns torch, not the caller.
            warnings.filterwarnings(
                "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
            )
            result = function(parameters, tangents, self._args, self._kwargs, self._targets)
        if keep_products:
            return tuple(result[name].detach() for name in owner.names)
        return result.detach()  # type: ignore[no-any-return]

    def _tune(self, vectors: Vectors, keep_products: bool) -> Vectors | torch.Tensor:
        """Measure the strategies on parts of this batch's probes; keep the cheapest."""
        owner = self._owner
        n_probes = vectors[0].shape[0]
        device = vectors[0].device
        parts: list[Vectors | torch.Tensor] = []
        try:
            start = time.perf_counter()
            self._graph()
            _synchronize(device)
            graph_seconds = time.perf_counter() - start
        except RuntimeError as error:  # no double-backward formula for some operation
            _logger.debug("Double backward failed (%s); using torch.func instead.", error)
            owner.strategy = "forward"
            return self._forward_over_reverse(vectors, keep_products)
        if n_probes < 4:  # too few to measure three ways: decide on a later, larger call
            return self._batched(vectors, keep_products)
        first = tuple(v[:1] for v in vectors)
        rest = tuple(v[1:] for v in vectors)
        candidates: list[tuple[Strategy, Callable[[Vectors, bool], Vectors | torch.Tensor]]] = [
            ("forward", self._forward_over_reverse),
            ("batched", self._batched),
            ("loop", self._loop),
        ]
        try:  # untimed: the first call of torch.func's products pays one-off set-up
            parts.append(self._forward_over_reverse(first, keep_products))
        except RuntimeError as error:  # e.g. vmap cannot trace data-dependent control flow
            _logger.debug("torch.func products failed (%s); measuring the others.", error)
            candidates = candidates[1:]
            parts.append(self._batched(first, keep_products))
        bounds = [1 + (len(rest[0]) * i) // len(candidates) for i in range(len(candidates) + 1)]
        projected: dict[Strategy, float] = {}
        for (name, method), low, high in zip(candidates, bounds, bounds[1:]):
            part = tuple(v[low:high] for v in vectors)
            _synchronize(device)
            start = time.perf_counter()
            parts.append(method(part, keep_products))
            _synchronize(device)
            seconds = time.perf_counter() - start
            if name == "forward":
                projected[name] = seconds * n_probes / (high - low)
            else:
                projected[name] = graph_seconds + seconds * n_probes / (high - low)
        owner.strategy = min(projected, key=projected.__getitem__)
        owner.measured = projected
        _logger.debug(
            "Hessian-vector products, projected seconds per batch: %s; using %s.",
            ", ".join(f"{name} {value:.3g}" for name, value in projected.items()),
            owner.strategy,
        )
        if not keep_products:
            return torch.cat(parts)  # type: ignore[arg-type]
        return tuple(torch.cat([part[i] for part in parts]) for i in range(len(vectors)))


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
