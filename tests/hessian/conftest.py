"""Small models and an independent ground truth: dense Hessians in float64."""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import pytest
import torch
from torch import nn
import torch.nn.functional as F


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device on this machine"
        ),
    ),
]


class Residual(nn.Module):
    """A forward that is not a plain chain: a skip connection, a branch and functional code."""

    def __init__(self, n_in: int = 6, width: int = 7, n_out: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(n_in, width)
        self.branch = nn.Linear(width, width)
        self.gate = nn.Linear(n_in, width)
        self.classifier = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        h = h + torch.sigmoid(self.gate(x)) * F.softplus(self.branch(h))
        return self.classifier(h)


class SmallCNN(nn.Module):
    def __init__(self, n_out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 2 * 2, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(torch.tanh(self.norm(self.conv(x))), 2)
        return self.head(h.flatten(1))


class LogSoftmaxMLP(nn.Module):
    """Ends with log_softmax, for nn.NLLLoss (as in Optuna's PyTorch example)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.out(torch.tanh(self.hidden(x))), dim=1)


class SigmoidMLP(nn.Module):
    """Ends with sigmoid and squeezes the single output, for nn.BCELoss."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(torch.tanh(self.hidden(x)))).squeeze(1)


def mlp(n_in: int, width: int, n_out: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, n_out, bias=bias))


def dense_head_hessian_norm(
    model: nn.Module,
    head: nn.Linear,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor],
) -> float:
    """||d^2 loss / d(W, b)^2||_F through the *whole* forward pass, densely, in float64."""
    model = model.eval()
    names = {module: name for name, module in model.named_modules()}
    prefix = names[head]
    keys = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if head.bias is not None else [])
    primals = tuple(getattr(head, key.rsplit(".", 1)[1]).detach().clone() for key in keys)

    def loss(*params: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, dict(zip(keys, params)), (inputs,))
        return loss_fn(out, targets)

    blocks = torch.autograd.functional.hessian(loss, primals)
    return float(sum(b.square().sum() for row in blocks for b in row).sqrt())


def dense_hessian(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: Any
) -> torch.Tensor:
    """The full Hessian of the loss in all trainable parameters, as a dense matrix."""
    model = model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, sizes)
        params = {n: v.reshape(s) for n, v, s in zip(names, pieces, shapes)}
        return loss_fn(torch.func.functional_call(model, params, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


partial_cross_entropy = functools.partial(F.cross_entropy, label_smoothing=0.05)
