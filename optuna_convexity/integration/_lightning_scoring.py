"""How :class:`~optuna_convexity.integration.lightning.ConvexityCallback` scores a screening
trial inside a Lightning ``Trainer``: the trainers it can score under, the module, loss and
batches it scores, and the supremum over the processes of a distributed run."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.strategies.xla import XLAStrategy
import optuna
from optuna.trial import BaseTrial
from optuna.trial import Trial
import torch
from torch import nn
from torch.utils.data import DataLoader

from optuna_convexity import _attrs
from optuna_convexity._report import record_mu
from optuna_convexity._report import score
from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import LastLayer
from optuna_convexity.hessian import LossFunction


def check_trainer(trainer: pl.Trainer, trial: BaseTrial) -> None:
    """Refuse a trainer under which a screening trial cannot be scored, before it trains."""
    strategy = trainer.strategy
    supported = isinstance(strategy, SingleDeviceStrategy) or (
        isinstance(strategy, DDPStrategy)
        and not isinstance(strategy, (DeepSpeedStrategy, XLAStrategy))
    )
    if not supported:
        raise ValueError(
            f"ConvexityCallback cannot score a screening trial under "
            f"{type(strategy).__name__}: each process holds only part of the model. Run "
            'screening trials on one device or with DDP, e.g. strategy="ddp_spawn" if '
            "optuna_convexity.is_screening(trial) else your strategy."
        )
    if trainer.world_size > 1 and isinstance(
        getattr(trial, "storage", None), optuna.storages.InMemoryStorage
    ):
        raise ValueError(
            f"Under a multi-process strategy (world size {trainer.world_size}) the trial's "
            "storage must be shared between processes, or the score written by rank 0 is "
            "lost: create the study with an RDB storage (storage='sqlite:///study.db') or "
            "an optuna.storages.JournalStorage."
        )
    min_epochs = trainer.min_epochs
    if min_epochs is not None and min_epochs > 1:
        raise ValueError(
            f"Trainer(min_epochs={min_epochs}) keeps a screening trial training past its "
            "first epoch. Set it for the other trials only, e.g. min_epochs=None if "
            f"optuna_convexity.is_screening(trial) else {min_epochs}."
        )


def model_and_loss(
    pl_module: pl.LightningModule, model: nn.Module | str | None, loss_fn: LossFunction | str
) -> tuple[nn.Module, LossFunction]:
    """The module to score and its loss, from the callback's ``model`` and ``loss_fn``."""
    if isinstance(model, str):
        try:
            model = pl_module.get_submodule(model)
        except AttributeError:
            raise ValueError(
                f"{type(pl_module).__name__} has no submodule {model!r}; pass model= "
                "the name of a submodule (see named_modules()) or the module itself."
            ) from None
    elif model is None:
        model = pl_module
    if not isinstance(loss_fn, str):
        return model, loss_fn
    found = getattr(pl_module, loss_fn, None)
    if not callable(found):
        raise ValueError(
            f"loss_fn={loss_fn!r} names no callable attribute of "
            f"{type(pl_module).__name__}; pass the loss itself (e.g. "
            "torch.nn.functional.cross_entropy) or the name of the attribute holding it."
        )
    return model, found


def batches(
    trainer: pl.Trainer,
    dataloader: Iterable[Any] | None,
    batch_fn: Callable[[Any], Any] | None,
    max_batches: int | None,
) -> tuple[Iterable[Any], int | None]:
    """The batches to score, prepared as for training, and at most how many."""
    limit = max_batches
    loader: Any = dataloader
    if loader is None:
        loader = trainer.train_dataloader
        if _is_collection_of_loaders(loader):
            raise ValueError(
                "The trainer has several training dataloaders; ConvexityCallback scores "
                "one. Pass dataloader= the one to score (or any iterable of batches)."
            )
        if loader is None:
            raise RuntimeError("The trainer has no training dataloader to score.")
        per_epoch = trainer.num_training_batches
        if isinstance(per_epoch, int) or (
            isinstance(per_epoch, float) and math.isfinite(per_epoch)
        ):
            limit = int(per_epoch) if limit is None else min(limit, int(per_epoch))
    return _PreparedBatches(trainer, loader, batch_fn), limit


def score_distributed(
    trainer: pl.Trainer,
    trial: BaseTrial,
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFunction,
    *,
    estimator: str | BaseHessianNormEstimator | None,
    last_layer: LastLayer,
    max_batches: int | None,
    max_examples: int | None,
) -> float:
    """Every rank scores its shard; the supremum over all ranks is recorded by rank 0."""
    recorded = _attrs.recorded_mu(trial)
    if recorded is not None:
        return recorded
    result = score(
        trial,
        model,
        batches,
        loss_fn,
        estimator=estimator,
        last_layer=last_layer,
        max_batches=max_batches,
        max_examples=max_examples,
    )
    local = torch.tensor(
        [
            result.mu if math.isfinite(result.mu) else -math.inf,
            float(result.n_batches),
            float(result.n_nonfinite),
            result.loss * result.n_examples,
            float(result.n_examples),
        ],
        dtype=torch.float64,
        device=trainer.strategy.root_device,
    )
    gathered = [torch.empty_like(local) for _ in range(trainer.world_size)]
    torch.distributed.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()
    best = float(table[:, 0].max())
    mu = best if math.isfinite(best) else math.nan
    if trainer.is_global_zero:
        record_mu(
            trial,
            mu,
            estimator=result.estimator,
            n_batches=int(table[:, 1].sum()),
            n_nonfinite_batches=int(table[:, 2].sum()),
            train_loss=float(table[:, 3].sum() / table[:, 4].sum()),
        )
    return mu


class _PreparedBatches:
    """The loader's batches, prepared as the fit loop prepares training batches."""

    def __init__(
        self, trainer: pl.Trainer, loader: Iterable[Any], batch_fn: Callable[[Any], Any] | None
    ) -> None:
        self._trainer = trainer
        self._loader = loader
        self._batch_fn = batch_fn

    def __iter__(self) -> Iterator[Any]:
        trainer = self._trainer
        module = trainer.lightning_module
        for batch in self._loader:
            batch = trainer.precision_plugin.convert_input(batch)
            # The fit loop's own steps: on_before_batch_transfer (of the module or the
            # datamodule), then transfer_batch_to_device and on_after_batch_transfer.
            batch = module._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = trainer.strategy.batch_to_device(batch, dataloader_idx=0)
            yield self._batch_fn(batch) if self._batch_fn is not None else batch


def _is_collection_of_loaders(loader: Any) -> bool:
    if isinstance(loader, Mapping):
        return True
    return isinstance(loader, Sequence) and any(isinstance(item, DataLoader) for item in loader)


def stored(trial: BaseTrial) -> Any:
    """The trial as stored now (a ``Trial`` caches its user attributes, and under
    ``ddp_spawn`` another process wrote the score)."""
    if isinstance(trial, Trial):
        return trial.storage.get_trial(trial._trial_id)
    return trial
