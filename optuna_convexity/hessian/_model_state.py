"""Leave the user's model and random number generators exactly as they were."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag.

    Eval mode freezes BatchNorm's running statistics and turns dropout off. Flags are restored
    per module because users sometimes keep parts of a model in a different mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the global CPU (and the model's CUDA device) RNG state on exit.

    Iterating a shuffling ``DataLoader`` draws from the global generator, and so can a model's
    forward pass; scoring must not change what the user's next training step samples.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield
