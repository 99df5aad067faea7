"""The convexity search in a PyTorch Lightning ``Trainer``: score, record and stop cleanly."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import BaseTrial
from torch import nn


try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "optuna_convexity.integration.lightning needs PyTorch Lightning (the 'lightning' "
        'package, 2.x): pip install "optuna-convexity[lightning]". Actual error: '
        f"{error}"
    ) from error

from optuna_convexity import _attrs
from optuna_convexity._report import is_screening
from optuna_convexity._report import report_convexity
from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import get_estimator
from optuna_convexity.hessian import LastLayer
from optuna_convexity.hessian import LossFunction
from optuna_convexity.hessian._arguments import count
from optuna_convexity.integration._lightning_scoring import batches
from optuna_convexity.integration._lightning_scoring import check_trainer
from optuna_convexity.integration._lightning_scoring import model_and_loss
from optuna_convexity.integration._lightning_scoring import score_distributed
from optuna_convexity.integration._lightning_scoring import stored


#: ``Callback`` hooks passed on to ``pruning_callback`` outside screening trials (the hooks
#: :class:`ConvexityCallback` implements itself pass them on too).
_FORWARDED_HOOKS = tuple(
    name
    for name, value in vars(Callback).items()
    if callable(value) and (name.startswith("on_") or name in ("setup", "teardown"))
)


class ConvexityCallback(Callback):
    """Runs a Lightning ``Trainer`` as a trial of the convexity search.

    In a **screening** trial (see :class:`~optuna_convexity.ConvexitySampler`), at the end of
    the first training epoch, the callback scores the ``LightningModule`` by the flatness of its
    loss, ``mu`` (:func:`~optuna_convexity.report_convexity`: the supremum over the training
    batches of the Hessian-norm estimate), records it on the trial, reports the ``monitor``
    metric of that epoch with ``trial.report(value, step=epoch)``, and asks the trainer to stop
    (``trainer.should_stop``). ``trainer.fit`` then returns normally: loggers and checkpoints
    finish as after any run, and no exception crosses Lightning's error handling. Call
    :meth:`check_pruned` right after ``trainer.fit``: it raises :class:`optuna.TrialPruned`, so
    the trial ends PRUNED with the one-epoch ``monitor`` value as its value, and
    ``study.best_trial`` is never a screening trial. Any study pruner works; the trial needs no
    ``trial.should_prune()`` call. (Without :meth:`check_pruned` a screening trial would
    complete with the objective's return value, and the sampler warns about it.) If Lightning
    ends the first epoch early (``max_steps``, ``max_time``, another callback setting
    ``should_stop``), the score is taken at that point.

    In a **promoted** trial, and in trials outside a convexity search (another sampler,
    ``optuna.trial.FixedTrial``), the callback does nothing, except run ``pruning_callback`` if
    one is given, e.g. optuna-integration's ``PyTorchLightningPruningCallback``. Every Lightning
    hook is passed on to it, in the callback's place in ``Trainer(callbacks=...)``; when it
    raises :class:`optuna.TrialPruned`, the trainer is stopped the same clean way and
    :meth:`check_pruned` raises it after ``fit``. In screening trials ``pruning_callback`` is
    not called at all: they end after one epoch whatever it would decide. (Lightning calls
    ``EarlyStopping`` and ``ModelCheckpoint`` after ``LightningModule.on_train_epoch_end``, but
    a wrapped callback in this callback's place: give those to the ``Trainer`` directly.)

    **What is scored.** The model is the ``LightningModule`` (or its submodule ``model``) called
    as ``model(inputs)``, i.e. its ``forward``, which must return what ``loss_fn`` takes. The
    batches are those of ``trainer.train_dataloader``, after the same preparation as the
    training batches (the precision plugin's input conversion, ``on_before_batch_transfer``,
    ``transfer_batch_to_device``, ``on_after_batch_transfer``), then ``batch_fn``, and must be
    ``(inputs, targets)`` pairs; at most ``trainer.num_training_batches`` of them
    (``limit_train_batches`` applies), under the precision plugin's autocast context.

    **Multiple devices.** Screening trials support single-device strategies (CPU, one GPU) and
    DDP (``"ddp_spawn"``, ``"ddp_fork"``, ``"ddp_notebook"``, ``"ddp"``); FSDP, DeepSpeed,
    model-parallel and XLA strategies raise :class:`ValueError` when ``fit`` starts, since the
    module in each process then holds only part of the model. Under DDP **every rank scores its
    own shard** of the training data (its ``DistributedSampler`` share of the epoch, at most
    ``max_batches`` / ``max_examples`` per rank); the ranks all-gather their results, so ``mu``
    is the supremum over all the batches of the epoch, as in a single process; **rank 0 alone
    writes** ``mu`` and reports ``monitor`` (rank 0's value: log it with ``sync_dist=True`` for
    a value over all ranks); every rank stops after the same epoch. The study's storage must
    then be shared between processes (RDB such as ``sqlite:///...``, or ``JournalStorage``):
    an ``InMemoryStorage`` raises :class:`ValueError` when ``fit`` starts, because what the
    spawned processes write would be lost. Lightning runs a whole script once per process
    under ``strategy="ddp"`` or ``torchrun``, and hence ``study.optimize`` too: as with any
    Optuna objective, prefer ``"ddp_spawn"`` (or ``"ddp_fork"``), where only the objective's
    process runs the study and :meth:`check_pruned` reads the result from the storage.
    Promoted trials run under any strategy; ``pruning_callback`` handles DDP itself
    (``PyTorchLightningPruningCallback`` needs an RDB storage there).

    Args:
        trial:
            The trial passed to the objective.
        loss_fn:
            The training loss, ``loss_fn(outputs, targets) -> scalar``, e.g.
            ``torch.nn.CrossEntropyLoss()`` or ``torch.nn.functional.cross_entropy``; or the
            name of the ``LightningModule`` attribute holding it (e.g. ``"criterion"``), looked
            up when ``fit`` starts. The default estimator needs one of the losses
            :mod:`optuna_convexity.hessian` supports.
        monitor:
            A metric logged with ``self.log`` in the first epoch (e.g. ``"val_acc"``), reported
            as the screening trial's value; it must be in ``trainer.callback_metrics`` when the
            epoch ends, else :class:`ValueError` lists the logged names. By default the
            ``monitor`` of ``pruning_callback``, if it has one; with neither, screening trials
            end PRUNED without a value (the criteria that read the value then rank by the
            training loss recorded with ``mu``, or by ``mu`` alone).
        pruning_callback:
            A Lightning callback to run outside screening trials only, typically
            ``optuna_integration.PyTorchLightningPruningCallback(trial, monitor="val_acc")``.
            Pass it here instead of in ``Trainer(callbacks=...)``.
        model:
            The module to score instead of the ``LightningModule``: a module, or the name of a
            submodule (``"net"``), for a ``LightningModule`` whose ``forward`` does not return
            the loss's input.
        dataloader:
            An iterable of batches to score instead of ``trainer.train_dataloader`` (e.g. a
            fixed subset; required if the trainer has several training dataloaders). Under DDP
            every rank scores all of it.
        batch_fn:
            Turns a prepared batch into ``(inputs, targets)``, e.g.
            ``lambda batch: (batch["image"], batch["label"])``.
        estimator:
            Overrides the sampler's ``estimator`` (``"last_layer"``, ``"hutchinson"``,
            ``"paper"`` or an instance).
        last_layer:
            The model's last ``nn.Linear`` (module or name), if it cannot be found
            automatically.
        max_batches:
            Score at most this many batches (per rank under DDP).
        max_examples:
            Score at most (about) this many examples (per rank under DDP).

    Raises:
        TypeError: If an argument has the wrong type (the message names the expected one).
        ValueError: If ``estimator`` is unknown or a limit is not a positive integer.

    Example:

        .. code-block:: python

            import lightning.pytorch as pl
            import optuna
            import torch
            from torch.utils.data import DataLoader, TensorDataset

            import optuna_convexity
            from optuna_convexity.integration.lightning import ConvexityCallback


            class Classifier(pl.LightningModule):
                def __init__(self, width):
                    super().__init__()
                    self.net = torch.nn.Sequential(
                        torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3)
                    )

                def forward(self, x):
                    return self.net(x)

                def training_step(self, batch, batch_idx):
                    x, y = batch
                    return torch.nn.functional.cross_entropy(self(x), y)

                def validation_step(self, batch, batch_idx):
                    x, y = batch
                    self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean())

                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)


            data = TensorDataset(torch.randn(256, 8), torch.randint(0, 3, (256,)))


            def objective(trial):
                model = Classifier(trial.suggest_int("width", 4, 64, log=True))
                callback = ConvexityCallback(
                    trial, torch.nn.functional.cross_entropy, monitor="val_acc"
                )
                trainer = pl.Trainer(
                    max_epochs=5, callbacks=[callback], logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                )
                trainer.fit(model, DataLoader(data, batch_size=32), DataLoader(data, 64))
                callback.check_pruned()  # ends screening trials, PRUNED after one epoch
                return trainer.callback_metrics["val_acc"].item()


            study = optuna.create_study(
                direction="maximize",
                sampler=optuna_convexity.ConvexitySampler(n_screening=6, n_promoted=2),
            )
            study.optimize(objective, n_trials=8)
            print(optuna_convexity.leaderboard(study))
    """

    def __init__(
        self,
        trial: BaseTrial,
        loss_fn: LossFunction | str,
        *,
        monitor: str | None = None,
        pruning_callback: Callback | None = None,
        model: nn.Module | str | None = None,
        dataloader: Iterable[Any] | None = None,
        batch_fn: Callable[[Any], Any] | None = None,
        estimator: str | BaseHessianNormEstimator | None = None,
        last_layer: LastLayer = None,
        max_batches: int | None = None,
        max_examples: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(trial, BaseTrial):
            raise TypeError(
                f"trial must be the optuna.trial.Trial passed to the objective, got "
                f"{type(trial).__name__}."
            )
        if not (isinstance(loss_fn, str) or callable(loss_fn)):
            raise TypeError(
                "loss_fn must be the training loss, loss_fn(outputs, targets) -> scalar (e.g. "
                "torch.nn.CrossEntropyLoss()), or the name of the LightningModule attribute "
                f"holding it; got {type(loss_fn).__name__}."
            )
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                f"monitor must be the name of a logged metric (str) or None, got "
                f"{type(monitor).__name__}."
            )
        if pruning_callback is not None:
            if isinstance(pruning_callback, ConvexityCallback):
                raise ValueError("pruning_callback cannot be another ConvexityCallback.")
            if not isinstance(pruning_callback, Callback):
                raise TypeError(
                    "pruning_callback must be a Lightning callback (lightning.pytorch.Callback), "
                    "e.g. optuna_integration.PyTorchLightningPruningCallback(trial, monitor=...);"
                    f" got {type(pruning_callback).__name__}."
                )
        if model is not None and not isinstance(model, (nn.Module, str)):
            raise TypeError(
                "model must be a torch.nn.Module, the name of a submodule of the "
                f"LightningModule, or None; got {type(model).__name__}."
            )
        if dataloader is not None and not isinstance(dataloader, Iterable):
            raise TypeError(
                f"dataloader must be an iterable of batches, got {type(dataloader).__name__}."
            )
        if batch_fn is not None and not callable(batch_fn):
            raise TypeError(
                "batch_fn must be callable, batch -> (inputs, targets); got "
                f"{type(batch_fn).__name__}."
            )
        max_batches = count("max_batches", max_batches, optional=True)
        max_examples = count("max_examples", max_examples, optional=True)
        if estimator is not None:
            get_estimator(estimator)  # unknown names fail here, not after an epoch of training

        self._trial = trial
        self._loss_fn = loss_fn
        self._monitor = monitor if monitor is not None else _monitor_of(pruning_callback)
        self._pruning_callback = pruning_callback
        self._model = model
        self._dataloader = dataloader
        self._batch_fn = batch_fn
        self._estimator = estimator
        self._last_layer = last_layer
        self._max_batches = max_batches
        self._max_examples = max_examples
        # The phase is decided by the sampler before the objective runs, and is the same in
        # every process of a distributed run (each gets a copy of the trial).
        self._screening = is_screening(trial)
        self._fit_started = False
        self._scored_epoch: int | None = None
        self._mu: float | None = None
        self._pruned: str | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def trial(self) -> BaseTrial:
        """The trial this callback belongs to."""
        return self._trial

    @property
    def monitor(self) -> str | None:
        """The metric reported as a screening trial's value, if any."""
        return self._monitor

    @property
    def pruning_callback(self) -> Callback | None:
        """The callback run outside screening trials, if any."""
        return self._pruning_callback

    @property
    def mu(self) -> float | None:
        """The score this process computed (every rank under DDP), ``None`` before it has."""
        return self._mu

    def check_pruned(self) -> None:
        """End the trial if the training just run ended it: call right after ``trainer.fit``.

        Raises :class:`optuna.TrialPruned` for a screening trial that was scored (stopped after
        its first epoch), and for a trial that ``pruning_callback`` pruned; otherwise returns.
        It reads the trial from the study's storage, so it works in the objective's process
        when the training ran in spawned processes (``strategy="ddp_spawn"``).

        Raises:
            optuna.TrialPruned: As described above.
            RuntimeError: If a screening trial has no score after ``fit``: the callback was not
                in ``Trainer(callbacks=...)``, ``fit`` was not called, or no training epoch
                ended (``limit_train_batches=0``, ``max_epochs=0``).

        Example:

            .. code-block:: python

                trainer.fit(model, datamodule=data)
                callback.check_pruned()
                return trainer.callback_metrics["val_acc"].item()
        """
        if self._screening:
            mu = _attrs.recorded_mu(stored(self._trial))
            if mu is not None:
                raise optuna.TrialPruned(f"screening trial scored after one epoch: mu = {mu:.6g}")
            if self._fit_started:
                problem = (
                    "trainer.fit returned without ending a training epoch (check "
                    "limit_train_batches and max_epochs: a screening trial trains one epoch)"
                )
            else:
                problem = (
                    "the callback did not run in this process and no score is stored: pass it "
                    "to Trainer(callbacks=[...]) and call check_pruned() after trainer.fit(...)"
                )
            raise RuntimeError(
                f"Screening trial {self._trial.number} has no convexity score: {problem}."
            )
        if self._pruned is not None:
            raise optuna.TrialPruned(self._pruned)
        check = getattr(self._pruning_callback, "check_pruned", None)
        if callable(check):  # optuna-integration's callback under DDP
            check()

    # -- Lightning hooks -------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = True
        self._scored_epoch = None
        self._pruned = None
        if self._screening:
            check_trainer(trainer, self._trial)
            # A missing attribute fails now, not after an epoch of training.
            model_and_loss(pl_module, self._model, self._loss_fn)
        self._forward("on_fit_start", trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._screening and self._scored_epoch is None:
            self._score(trainer, pl_module)
            self._scored_epoch = trainer.current_epoch
            trainer.should_stop = True
            min_steps = trainer.min_steps
            if min_steps is not None and trainer.global_step < min_steps:
                raise ValueError(
                    f"Trainer(min_steps={min_steps}) keeps a screening trial training past its "
                    "first epoch. Set it for the other trials only, e.g. min_steps=None if "
                    f"optuna_convexity.is_screening(trial) else {min_steps}."
                )
        self._forward("on_train_epoch_end", trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._screening and self._scored_epoch is not None and self._monitor is not None:
            # Read here rather than at the epoch's end: by now everything logged in the
            # epoch, including in LightningModule.on_train_epoch_end, is in callback_metrics.
            value = trainer.callback_metrics.get(self._monitor)
            if value is None:
                logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
                raise ValueError(
                    f"The monitored metric {self._monitor!r} was not logged in the screening "
                    f"epoch (logged: {logged}). Pass the name of a metric logged with self.log in "
                    "the first epoch (validation must run in it), or monitor=None."
                )
            if trainer.is_global_zero:
                self._trial.report(float(value), step=self._scored_epoch)
        self._forward("on_train_end", trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        if self._screening or self._pruning_callback is None:
            return {}
        return {"pruning_callback": self._pruning_callback.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._pruning_callback is not None and "pruning_callback" in state_dict:
            self._pruning_callback.load_state_dict(state_dict["pruning_callback"])

    # -- internals -------------------------------------------------------------------------

    def _forward(self, hook: str, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """Pass a hook on to ``pruning_callback`` outside screening trials; turn its
        ``TrialPruned`` into a clean stop that :meth:`check_pruned` reports after ``fit``."""
        if self._screening or self._pruning_callback is None:
            return
        try:
            getattr(self._pruning_callback, hook)(trainer, *args, **kwargs)
        except optuna.TrialPruned as pruned:
            self._pruned = str(pruned) or f"pruned by {type(self._pruning_callback).__name__}"
            trainer.should_stop = True

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model, loss_fn = model_and_loss(pl_module, self._model, self._loss_fn)
        prepared, max_batches = batches(
            trainer, self._dataloader, self._batch_fn, self._max_batches
        )
        options: dict[str, Any] = {
            "estimator": self._estimator,
            "last_layer": self._last_layer,
            "max_batches": max_batches,
            "max_examples": self._max_examples,
        }
        with trainer.precision_plugin.forward_context():
            if trainer.world_size == 1:
                mu = report_convexity(
                    self._trial, model, prepared, loss_fn, end_trial=False, **options
                )
            else:
                mu = score_distributed(trainer, self._trial, model, prepared, loss_fn, **options)
        self._mu = mu


def _forwarder(hook: str) -> Callable[..., None]:
    def forward(self: ConvexityCallback, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._forward(hook, trainer, *args, **kwargs)

    forward.__name__ = forward.__qualname__ = hook
    forward.__doc__ = f"Passes ``{hook}`` on to ``pruning_callback`` outside screening trials."
    return forward


for _hook in _FORWARDED_HOOKS:
    if _hook not in vars(ConvexityCallback):
        setattr(ConvexityCallback, _hook, _forwarder(_hook))


def _monitor_of(callback: Callback | None) -> str | None:
    monitor = getattr(callback, "monitor", None)
    return monitor if isinstance(monitor, str) else None
