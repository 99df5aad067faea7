"""Find the last linear layer of any ``nn.Module`` and capture its input and output."""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Any

import torch
from torch import nn


LastLayer = nn.Module | str | None


@dataclasses.dataclass
class HeadCall:
    """One forward pass through the head: its input ``a`` and output ``z`` (both unflattened)."""

    layer: nn.Linear
    name: str
    inputs: torch.Tensor
    outputs: torch.Tensor


def resolve_last_layer(model: nn.Module, last_layer: LastLayer) -> tuple[nn.Linear, str] | None:
    """Return the explicitly requested layer and its name, or :obj:`None` to search for it."""
    if last_layer is None:
        return None
    names = {module: name for name, module in model.named_modules()}
    if isinstance(last_layer, str):
        modules = dict(model.named_modules())
        if last_layer not in modules:
            linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"last_layer={last_layer!r} is not a submodule of the model. "
                f"Its nn.Linear submodules are: {linear_names or 'none'}."
            )
        module = modules[last_layer]
    elif isinstance(last_layer, nn.Module):
        if last_layer not in names:
            raise ValueError(
                "last_layer is not a submodule of the model; pass the layer object the model "
                "calls (e.g. model.fc) or its name from model.named_modules()."
            )
        module = last_layer
    else:
        raise TypeError(
            f"last_layer must be an nn.Linear submodule, its name, or None; got "
            f"{type(last_layer).__name__}."
        )
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"last_layer {names[module]!r} is a {type(module).__name__}; the closed-form "
            "estimators need an nn.Linear. Use estimator='hutchinson' for other heads."
        )
    return module, names[module]


class HeadCapture:
    """Forward hooks that record the last ``nn.Linear`` call of each forward pass.

    Without an explicit layer, every ``nn.Linear`` is hooked during the first forward pass; the
    last one called is the head, and the other hooks are then removed so later batches pay for
    one hook only. Works for any ``forward`` (branches, residuals, functional code), because it
    observes what runs instead of reading the module tree.
    """

    def __init__(self, model: nn.Module, last_layer: LastLayer) -> None:
        self._model = model
        explicit = resolve_last_layer(model, last_layer)
        self._names = {module: name for name, module in model.named_modules()}
        if explicit is not None:
            self._candidates: list[nn.Linear] = [explicit[0]]
            self.head: nn.Linear | None = explicit[0]
        else:
            self._candidates = [m for m in model.modules() if isinstance(m, nn.Linear)]
            self.head = None
            if not self._candidates:
                raise ValueError(
                    f"{type(model).__name__} has no nn.Linear layer, which the 'paper' and "
                    "'last_layer' estimators score. Pass last_layer=<your head> if it is an "
                    "nn.Linear outside the model, or use estimator='hutchinson'."
                )
        self._calls: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.armed = False

    def __enter__(self) -> HeadCapture:
        for module in self._candidates:
            self._handles.append(module.register_forward_hook(self._record))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove_hooks()
        self._calls.clear()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.armed:  # forward passes outside scoring are none of our business
            self._calls.append((module, args[0], output))  # type: ignore[arg-type]

    def pop(self) -> HeadCall:
        """Return the head's call in the forward pass that just ran, and forget it."""
        calls = self._calls
        if self.head is None:
            if not calls:
                raise ValueError(
                    f"{type(self._model).__name__} called none of its nn.Linear layers in its "
                    "forward pass. Pass last_layer=... or use estimator='hutchinson'."
                )
            self.head = calls[-1][0]
            self._remove_hooks()
            self._handles.append(self.head.register_forward_hook(self._record))
            calls = [call for call in calls if call[0] is self.head]
        self._calls = []
        if len(calls) != 1:
            name = self._names.get(self.head, "<last_layer>")
            raise ValueError(
                f"The last layer {name!r} ran {len(calls)} times in one forward pass; the "
                "closed-form estimators need a head that runs exactly once. Pass the right layer "
                "as last_layer=... or use estimator='hutchinson'."
            )
        _, inputs, outputs = calls[0]
        return HeadCall(self.head, self._head_name, inputs, outputs)

    @property
    def _head_name(self) -> str:
        return self._names.get(self.head, "<last_layer>") if self.head is not None else ""


def is_view_of(output: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether ``output`` holds exactly ``logits``'s elements in the same order (a reshape)."""
    return (
        output.data_ptr() == logits.data_ptr()
        and output.numel() == logits.numel()
        and output.is_contiguous()
        and logits.is_contiguous()
        and output.dtype == logits.dtype
    )
