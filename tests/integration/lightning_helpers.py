"""A tiny LightningModule and data for the Lightning tests (importable by spawned processes)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset
from torch.utils.data import TensorDataset


N_FEATURES = 6
N_CLASSES = 3


def dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def loader(data: Dataset[Any], batch_size: int = 16) -> DataLoader[Any]:
    return DataLoader(data, batch_size=batch_size, shuffle=False)


class TinyClassifier(pl.LightningModule):
    """Logs ``val_loss`` and ``val_acc``; counts the training batches it sees."""

    def __init__(self, width: int = 8, lr: float = 0.1, input_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(width)
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, width), nn.Tanh(), nn.Linear(width, N_CLASSES)
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.lr = lr
        self.input_scale = input_scale
        self.train_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict):
            return batch["x"], batch["y"]
        if isinstance(batch[0], (list, tuple)):  # several dataloaders: train on the first
            return self.unpack(batch[0])
        return batch[0], batch[1]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.input_scale == 1.0:
            return batch
        x, y = self.unpack(batch)
        x = x * self.input_scale
        return {"x": x, "y": y} if isinstance(batch, dict) else (x, y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_batches += 1
        x, y = self.unpack(batch)
        return self.loss_fn(self(x), y)  # type: ignore[no-any-return]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self.unpack(batch)
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DictDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x, y = self.data[index]
        return {"x": x, "y": y}


def trainer(callbacks: list[pl.Callback], max_epochs: int = 3, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, **options)


class Recorder(pl.Callback):
    """Records the hooks Lightning calls on it."""

    def __init__(self) -> None:
        self.calls: list[str] = []


def _recording(hook: str) -> Any:
    def record(self: Recorder, *args: Any, **kwargs: Any) -> None:
        self.calls.append(hook)

    return record


for _hook in (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_validation_end",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
    "teardown",
):
    setattr(Recorder, _hook, _recording(_hook))
