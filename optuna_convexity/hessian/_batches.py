"""Unpack the batches a data loader yields and move them to the model's device."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import torch


def unpack_batch(batch: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]:
    """Split a batch into the model's positional inputs, keyword inputs and the targets.

    A batch is ``(inputs, targets)``: ``inputs`` is a tensor (``model(inputs)``), a tuple or list
    of them (``model(*inputs)``) or a mapping (``model(**inputs)``).
    """
    if type(batch) in (tuple, list) and len(batch) == 2:  # the common case, quickly
        inputs, targets = batch
        if type(inputs) is torch.Tensor and type(targets) is torch.Tensor:
            return (inputs,), {}, targets
    if isinstance(batch, Mapping):
        keys = list(batch)
        shown = ", ".join(repr(key) for key in keys[:6]) + (", ..." if len(keys) > 6 else "")
        example = (
            f"((batch[{keys[0]!r}], batch[{keys[1]!r}]) for batch in loader)"
            if len(keys) >= 2
            else '((batch["inputs"], batch["labels"]) for batch in loader)'
        )
        raise TypeError(
            f"Batch {index} is a {type(batch).__name__} with keys {shown or 'none'}; expected "
            "(inputs, targets). Wrap your loader so that it yields input-target pairs, naming "
            f"the keys, e.g. {example}; a dict of model inputs goes in the first place: "
            '(({"input_ids": b["input_ids"]}, b["labels"]) for b in loader).'
        )
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
        kind = type(batch).__name__
        length = f" of length {len(batch)}" if isinstance(batch, Sequence) else ""
        raise TypeError(
            f"Batch {index} is a {kind}{length}; expected (inputs, targets). Wrap your loader, "
            "e.g. ((x, y) for x, y, *_ in loader), so that it yields input-target pairs."
        )
    inputs, targets = batch
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"Batch {index}: targets must be a tensor, got {type(targets).__name__}.")
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}, targets
    if isinstance(inputs, Mapping):
        return (), dict(inputs), targets
    if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        return tuple(inputs), {}, targets
    raise TypeError(
        f"Batch {index}: inputs must be a tensor, a tuple of tensors or a dict of them; got "
        f"{type(inputs).__name__}."
    )


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor inside ``value`` to ``device`` (asynchronously where possible)."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    return value


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")
