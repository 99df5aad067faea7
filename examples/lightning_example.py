"""PyTorch Lightning: the convexity search with ``ConvexityCallback``, on scikit-learn's digits.

A ``LightningModule`` (an MLP whose depth, width, dropout, learning rate and weight decay are
tuned) is trained by an ordinary Lightning ``Trainer`` on the CPU. ``ConvexityCallback`` scores
each screening trial after its first epoch and stops the trainer there; ``check_pruned()`` after
``trainer.fit`` ends it PRUNED with its one-epoch validation accuracy. The candidates the
sampler's criterion ranks first are then promoted to the full number of epochs. With
``--pruning``, promoted trials also run optuna-integration's
``PyTorchLightningPruningCallback`` under a ``MedianPruner`` (which sees the promoted trials
only). By default the candidates with the best one-epoch ``monitor`` value
(which ``ConvexityCallback`` reports) are promoted; ``--criterion mu`` promotes by
``mu`` alone, the paper's rule. The defaults take about ten seconds on a CPU.

    pip install "optuna-convexity[lightning,examples]"
    python examples/lightning_example.py
    python examples/lightning_example.py --n-screening 8 --n-promoted 2 --epochs 3
    python examples/lightning_example.py --pruning --storage sqlite:///lightning.db

Run again with the same ``--storage`` to continue the study with a new round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import logging
import time
import warnings

import lightning.pytorch as pl
import optuna
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity
from optuna_convexity.integration.lightning import ConvexityCallback


STUDY_NAME = "lightning-example"


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8x8 digits (1797 images, 10 classes), split 60/20/20."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        features, labels = load_digits(return_X_y=True)
        x_train, x_rest, y_train, y_rest = train_test_split(
            features / 16.0, labels, test_size=0.4, random_state=0, stratify=labels
        )
        x_valid, x_test, y_valid, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
        )
        for name, x, y in (
            ("train", x_train, y_train),
            ("valid", x_valid, y_valid),
            ("test", x_test, y_test),
        ):
            self.splits[name] = TensorDataset(
                torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
            )

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.splits["valid"], batch_size=512)

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(self.splits["test"], batch_size=512)


class Classifier(pl.LightningModule):
    """An MLP classifier; ``forward`` returns the logits that ``loss_fn`` takes."""

    def __init__(
        self, n_layers: int, width: int, dropout: float, lr: float, weight_decay: float
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width_in = 64
        for _ in range(n_layers):
            layers += [nn.Linear(width_in, width), nn.ReLU(), nn.Dropout(dropout)]
            width_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width_in, 10))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss  # type: ignore[no-any-return]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def make_objective(epochs: int, pruning: bool) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        model = Classifier(
            n_layers=trial.suggest_int("n_layers", 1, 3),
            width=trial.suggest_int("width", 16, 256, log=True),
            dropout=trial.suggest_float("dropout", 0.0, 0.5),
            lr=trial.suggest_float("lr", 1e-4, 1e-1, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        )
        data = DigitsDataModule(batch_size=trial.suggest_categorical("batch_size", [32, 64, 128]))
        pruning_callback = None
        if pruning:
            from optuna_integration import PyTorchLightningPruningCallback

            pruning_callback = PyTorchLightningPruningCallback(trial, monitor="val_acc")
        # Scores screening trials after one epoch (loss_fn names the module's attribute);
        # in promoted trials it only runs pruning_callback, if any.
        callback = ConvexityCallback(
            trial, "loss_fn", monitor="val_acc", pruning_callback=pruning_callback
        )
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=data)
        callback.check_pruned()  # raises optuna.TrialPruned in screening (and pruned) trials
        accuracy = trainer.callback_metrics["val_acc"].item()
        test_accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]
        trial.set_user_attr("test_accuracy", test_accuracy)
        return accuracy

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-screening", type=int, default=20, help="screening trials per round")
    parser.add_argument("--n-promoted", type=int, default=4, help="promoted trials per round")
    parser.add_argument("--epochs", type=int, default=10, help="full budget of promoted trials")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the search")
    parser.add_argument("--estimator", default="last_layer")
    parser.add_argument(
        "--criterion",
        default=None,
        help="promotion criterion (default: the sampler's); 'mu' is the paper's rule",
    )
    parser.add_argument(
        "--pruning", action="store_true", help="prune promoted trials (needs optuna-integration)"
    )
    parser.add_argument("--storage", default=None, help="e.g. sqlite:///lightning.db")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    pl.seed_everything(args.seed)
    torch.set_num_threads(1)  # these tiny models train fastest on one thread
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
    seed = args.seed
    if args.storage is not None:  # a rerun continues the study: screen new candidates
        existing = optuna.get_all_study_summaries(args.storage)
        seed += sum(s.n_trials for s in existing if s.study_name == STUDY_NAME)
    study = optuna.create_study(
        storage=args.storage,
        study_name=STUDY_NAME,
        load_if_exists=args.storage is not None,
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(
            n_screening=args.n_screening,
            n_promoted=args.n_promoted,
            seed=seed,
            estimator=args.estimator,
            **({"criterion": args.criterion} if args.criterion else {}),
        ),
        pruner=optuna_convexity.ConvexityPruner(
            optuna.pruners.MedianPruner(n_warmup_steps=2) if args.pruning else None
        ),
    )
    start = time.perf_counter()
    study.optimize(
        make_objective(args.epochs, args.pruning),
        n_trials=args.rounds * (args.n_screening + args.n_promoted),
        callbacks=[optuna_convexity.ProgressCallback()],
    )
    elapsed = time.perf_counter() - start

    print(optuna_convexity.leaderboard(study))
    best = study.best_trial
    print(
        f"Best trial {best.number}: validation accuracy {best.value:.4f}, test accuracy "
        f"{best.user_attrs['test_accuracy']:.4f}, params {best.params}"
    )
    print(f"Searched in {elapsed:.1f} s.")


if __name__ == "__main__":
    main()
