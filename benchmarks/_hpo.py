"""Helpers of ``hpo_quality.py``: data, search space, cached deterministic training.

Training is deterministic: a configuration trained under one run seed gives the same model,
epoch by epoch, however often it is requested. :class:`TrainingPool` therefore trains each
(configuration, seed) once and hands the recorded epochs to every study that asks for them,
with the time each epoch took when it was computed, so that every study can be charged the
time its trials would have taken on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import dataclasses
import json
import time
from typing import Any
import zlib

import numpy as np
import optuna
from sklearn.datasets import load_breast_cancer
from sklearn.datasets import load_digits
from sklearn.datasets import load_iris
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
import torch
from torch import nn

from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import strong_convexity


DATASETS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "wine": load_wine,
    "iris": load_iris,
}

#: The search space, modelled on the authors' tabular one (``hpobench/util/config.py`` in
#: github.com/yrahul3910/flatness-guided-hpo: depth 1-4, width 16-1024, batch size 4-256,
#: learning rate 1e-5-1, L2 1e-8-1). Narrowed where the authors' values only waste compute:
#: batch size 4 (the slowest epochs), Adam learning rates above 0.1 and weight decay above 0.1.
WIDTHS = (16, 32, 64, 128, 256, 512)
BATCH_SIZES = (16, 32, 64, 128, 256)
SEARCH_SPACE_TEXT = (
    "1-4 hidden layers of width {16, 32, ..., 512} (ReLU); batch size {16, 32, ..., 256}; "
    "Adam, learning rate 1e-5 to 1e-1 (log); weight decay 1e-8 to 1e-1 (log)"
)


def _estimators() -> dict[str, str | BaseHessianNormEstimator]:
    return {
        "last_layer": "last_layer",
        "hutchinson": HutchinsonEstimator(n_probes=16, seed=0),
        "paper": "paper",
    }


ESTIMATORS = tuple(_estimators())


@dataclasses.dataclass(frozen=True)
class Splits:
    """Standardised train/validation/test tensors of one dataset."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def load_splits(name: str) -> Splits:
    """A fixed stratified 60/20/20 split (``random_state=0``), standardised on the train part."""
    features, labels = DATASETS[name](return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(
        features, labels, test_size=0.4, random_state=0, stratify=labels
    )
    x_valid, x_test, y_valid, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
    )
    scaler = StandardScaler().fit(x_train)

    def x(values: np.ndarray) -> torch.Tensor:
        return torch.tensor(scaler.transform(values), dtype=torch.float32)

    def y(values: np.ndarray) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    return Splits(
        name,
        x(x_train),
        y(y_train),
        x(x_valid),
        y(y_valid),
        x(x_test),
        y(y_test),
        int(labels.max()) + 1,
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """One point of the search space."""

    n_layers: int
    width: int
    batch_size: int
    lr: float
    weight_decay: float

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def suggest_config(trial: optuna.Trial) -> Config:
    return Config(
        n_layers=trial.suggest_int("n_layers", 1, 4),
        width=trial.suggest_categorical("width", WIDTHS),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        lr=trial.suggest_float("lr", 1e-5, 1e-1, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-8, 1e-1, log=True),
    )


def build_model(config: Config, n_features: int, n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = n_features
    for _ in range(config.n_layers):
        layers += [nn.Linear(width_in, config.width), nn.ReLU()]
        width_in = config.width
    return nn.Sequential(*layers, nn.Linear(width_in, n_classes))


@dataclasses.dataclass(frozen=True)
class Epoch:
    """What one training epoch gave, and how long it took (training plus evaluation)."""

    train_loss: float
    valid_accuracy: float
    valid_loss: float
    test_accuracy: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class Score:
    """``mu`` of one estimator after the first epoch, and the seconds its scoring pass took."""

    mu: float
    seconds: float


def _stable_seed(*parts: object) -> int:
    return zlib.crc32(json.dumps([str(p) for p in parts]).encode()) & 0x7FFFFFFF


class Training:
    """One configuration trained under one run seed, an epoch at a time, on demand.

    The initial weights and each epoch's shuffle come from generators seeded by the run seed
    and the configuration, so the trajectory is the same whoever asks for it and in whatever
    pieces. A configuration that is screened is scored by every estimator right after its first
    epoch (``mu``); the others are never scored.
    """

    def __init__(self, config: Config, splits: Splits, seed: int, max_epochs: int) -> None:
        self.config = config
        self.splits = splits
        self.max_epochs = max_epochs
        self.seed = _stable_seed(seed, config.key())
        self.epochs: list[Epoch] = []
        self.scores: dict[str, Score] = {}
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.compute_seconds = 0.0  # time actually spent here (shared work counted once)
        self._wants_scores = False

    def screen(self) -> Epoch:
        """Epoch 1, with every estimator's ``mu`` of the model as it is right after it."""
        if not self.scores:
            if len(self.epochs) > 1:
                raise RuntimeError(
                    "this configuration was trained past its first epoch before it was screened; "
                    "run the convexity searches of a pool before the others"
                )
            self._wants_scores = True
            if self.epochs:
                self._score()
        return self.epoch(1)

    def epoch(self, number: int) -> Epoch:
        """The result of epoch ``number`` (1-based), training up to it if needed."""
        if not 1 <= number <= self.max_epochs:
            raise ValueError(f"epoch {number} is outside 1..{self.max_epochs}")
        while len(self.epochs) < number:
            self._train_one_epoch()
        return self.epochs[number - 1]

    def release(self) -> None:
        """Drop the model and optimizer state (no further epochs can be trained)."""
        self._model = None
        self._optimizer = None

    def _train_one_epoch(self) -> None:
        start = time.perf_counter()
        if self._model is None:
            if self.epochs:
                raise RuntimeError("the model was released; no more epochs can be trained")
            torch.manual_seed(self.seed)
            self._model = build_model(
                self.config, self.splits.x_train.shape[1], self.splits.n_classes
            )
            self._optimizer = torch.optim.Adam(
                self._model.parameters(),
                lr=self.config.lr,
                weight_decay=self.config.weight_decay,
            )
        model, optimizer = self._model, self._optimizer
        assert optimizer is not None
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(self.seed + len(self.epochs) + 1)
        order = torch.randperm(len(self.splits.y_train), generator=generator)
        model.train()
        total, count = 0.0, 0
        for index in order.split(self.config.batch_size):
            inputs, targets = self.splits.x_train[index], self.splits.y_train[index]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        valid_accuracy, valid_loss = evaluate(model, self.splits.x_valid, self.splits.y_valid)
        test_accuracy, _ = evaluate(model, self.splits.x_test, self.splits.y_test)
        seconds = time.perf_counter() - start
        self.compute_seconds += seconds
        epoch = Epoch(total / count, valid_accuracy, valid_loss, test_accuracy, seconds)
        self.epochs.append(epoch)
        if len(self.epochs) == 1 and self._wants_scores:
            self._score()
        if len(self.epochs) == self.max_epochs:
            self.release()

    def _score(self) -> None:
        assert self._model is not None
        batches = list(
            zip(
                self.splits.x_train.split(self.config.batch_size),
                self.splits.y_train.split(self.config.batch_size),
            )
        )
        for name, estimator in _estimators().items():
            start = time.perf_counter()
            with np.errstate(all="ignore"):
                mu = strong_convexity(
                    self._model, batches, nn.CrossEntropyLoss(), estimator=estimator
                ).mu
            seconds = time.perf_counter() - start
            self.compute_seconds += seconds
            self.scores[name] = Score(float(mu), seconds)


def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy (``nan`` when the outputs are not finite)."""
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
        accuracy = float((outputs.argmax(dim=1) == targets).float().mean())
        loss = float(nn.functional.cross_entropy(outputs, targets))
    return accuracy, loss


class TrainingPool:
    """Every :class:`Training` of one (dataset, run seed), by configuration."""

    def __init__(self, splits: Splits, seed: int, max_epochs: int) -> None:
        self.splits = splits
        self.seed = seed
        self.max_epochs = max_epochs
        self._trainings: dict[str, Training] = {}

    def get(self, config: Config) -> Training:
        key = config.key()
        if key not in self._trainings:
            self._trainings[key] = Training(config, self.splits, self.seed, self.max_epochs)
        return self._trainings[key]

    def __iter__(self) -> Iterator[Training]:
        return iter(self._trainings.values())

    def release_all(self) -> None:
        for training in self._trainings.values():
            training.release()

    @property
    def compute_seconds(self) -> float:
        return sum(t.compute_seconds for t in self._trainings.values())
