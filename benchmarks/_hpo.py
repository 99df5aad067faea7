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
import math
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


_SKLEARN: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "wine": load_wine,
    "iris": load_iris,
}

#: The MLP search space, modelled on the authors' tabular one (``hpobench/util/config.py`` in
#: github.com/yrahul3910/flatness-guided-hpo: depth 1-4, width 16-1024, batch size 4-256,
#: learning rate 1e-5-1, L2 1e-8-1). Narrowed where the authors' values only waste compute:
#: batch size 4 (the slowest epochs), Adam learning rates above 0.1 and weight decay above 0.1.
WIDTHS = (16, 32, 64, 128, 256, 512)
BATCH_SIZES = (16, 32, 64, 128, 256)
#: The small 1-D CNN space (MNIST-1D): 1-2 blocks of a convolution of ``channels`` filters of
#: width ``kernel`` (padding keeps the length), ReLU and max-pooling by 2, then a linear
#: classifier on the flattened features.
CHANNELS = (8, 16, 32)
KERNELS = (3, 5, 7)

SPACE_TEXT = {
    "mlp": (
        "1-4 hidden layers of width {16, 32, ..., 512} (ReLU); batch size {16, 32, ..., 256}; "
        "Adam, learning rate 1e-5 to 1e-1 (log); weight decay 1e-8 to 1e-1 (log)"
    ),
    "cnn": (
        "1-2 blocks of a convolution of {8, 16, 32} channels and kernel width {3, 5, 7} (same "
        "padding), ReLU and max-pooling by 2, then a linear classifier; batch size "
        "{16, 32, ..., 256}; "
        "Adam, learning rate 1e-5 to 1e-1 (log); weight decay 1e-8 to 1e-1 (log)"
    ),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """A dataset and the search space tuned on it."""

    name: str
    dataset: str
    space: str  # "mlp" or "cnn"
    label_noise: float = 0.0
    text: str = ""


#: The problems, by name. MNIST-1D (Greydanus 2020) is generated procedurally by the
#: ``mnist1d`` package (``make_dataset``, no download): 10 classes of length-40 signals, small
#: enough to train in seconds and hard enough that the methods differ, unlike the scikit-learn
#: sets, where every method reaches the same accuracy.
PROBLEMS: dict[str, Problem] = {
    "mnist1d": Problem("mnist1d", "mnist1d", "mlp", text="MNIST-1D, MLP"),
    "mnist1d_cnn": Problem("mnist1d_cnn", "mnist1d", "cnn", text="MNIST-1D, 1-D CNN"),
    "mnist1d_noisy": Problem(
        "mnist1d_noisy",
        "mnist1d",
        "mlp",
        label_noise=0.2,
        text="MNIST-1D, MLP, 20 % of the training labels replaced by another class",
    ),
    **{name: Problem(name, name, "mlp", text=f"scikit-learn {name}, MLP") for name in _SKLEARN},
}
#: Kept for the name the reports and tests use.
DATASETS = PROBLEMS
SEARCH_SPACE_TEXT = SPACE_TEXT["mlp"]


def _estimators() -> dict[str, str | BaseHessianNormEstimator]:
    return {
        "last_layer": "last_layer",
        "hutchinson": HutchinsonEstimator(n_probes=16, seed=0),
        "paper": "paper",
    }


ESTIMATORS = tuple(_estimators())


@dataclasses.dataclass(frozen=True)
class Splits:
    """Standardised train/validation/test tensors of one problem."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    space: str = "mlp"


def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D as the package's defaults make it (seed 42), with 6,000 examples instead of
    5,000: its own 80/20 split gives 4,800 for training and validation and 1,200 for test."""
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    args = get_dataset_args()
    args.num_samples = 6000
    data = make_dataset(args)  # procedural: no download
    return data["x"], data["y"], data["x_test"], data["y_test"]


def load_splits(name: str) -> Splits:
    """The fixed splits of a problem, standardised on its train part.

    scikit-learn sets: a stratified 60/20/20 split (``random_state=0``). MNIST-1D: 4,000
    training, 800 validation and 1,200 test examples; with label noise, that fraction of the
    *training* labels is replaced by a different class (validation and test stay clean).
    """
    problem = PROBLEMS[name]
    if problem.dataset == "mnist1d":
        x_pool, y_pool, x_test, y_test = _mnist1d()
        x_train, x_valid, y_train, y_valid = train_test_split(
            x_pool, y_pool, test_size=800, random_state=0, stratify=y_pool
        )
        labels = y_pool
    else:
        features, labels = _SKLEARN[problem.dataset](return_X_y=True)
        x_train, x_rest, y_train, y_rest = train_test_split(
            features, labels, test_size=0.4, random_state=0, stratify=labels
        )
        x_valid, x_test, y_valid, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
        )
    n_classes = int(labels.max()) + 1
    if problem.label_noise:
        rng = np.random.default_rng(0)
        y_train = y_train.copy()
        flipped = rng.random(len(y_train)) < problem.label_noise
        shift = rng.integers(1, n_classes, size=len(y_train))
        y_train[flipped] = (y_train[flipped] + shift[flipped]) % n_classes
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
        n_classes,
        problem.space,
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """One point of a search space: the trial's parameters, by name."""

    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, params: dict[str, Any]) -> Config:
        return cls(tuple(sorted(params.items())))

    def __getitem__(self, name: str) -> Any:
        return dict(self.params)[name]

    @property
    def lr(self) -> float:
        return float(self["lr"])

    @property
    def batch_size(self) -> int:
        return int(self["batch_size"])

    @property
    def weight_decay(self) -> float:
        return float(self["weight_decay"])

    def key(self) -> str:
        return json.dumps(dict(self.params), sort_keys=True)


def suggest_config(trial: optuna.Trial, space: str = "mlp") -> Config:
    """The trial's configuration in ``space`` (``"mlp"`` or ``"cnn"``)."""
    if space == "mlp":
        params: dict[str, Any] = {
            "n_layers": trial.suggest_int("n_layers", 1, 4),
            "width": trial.suggest_categorical("width", WIDTHS),
        }
    else:
        params = {
            "n_conv": trial.suggest_int("n_conv", 1, 2),
            "channels": trial.suggest_categorical("channels", CHANNELS),
            "kernel": trial.suggest_categorical("kernel", KERNELS),
        }
    params["batch_size"] = trial.suggest_categorical("batch_size", BATCH_SIZES)
    params["lr"] = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    params["weight_decay"] = trial.suggest_float("weight_decay", 1e-8, 1e-1, log=True)
    return Config.of(params)


def build_model(config: Config, n_features: int, n_classes: int) -> nn.Sequential:
    """The network of ``config``: an MLP, or a 1-D CNN when it has ``n_conv``."""
    layers: list[nn.Module] = []
    names = dict(config.params)
    if "n_conv" in names:
        channels_in, length = 1, n_features
        layers.append(nn.Unflatten(1, (1, n_features)))
        for _ in range(int(names["n_conv"])):
            layers += [
                nn.Conv1d(channels_in, names["channels"], names["kernel"], padding="same"),
                nn.ReLU(),
                nn.MaxPool1d(2),
            ]
            channels_in, length = names["channels"], length // 2
        layers.append(nn.Flatten())
        return nn.Sequential(*layers, nn.Linear(channels_in * length, n_classes))
    width_in = n_features
    for _ in range(int(names["n_layers"])):
        layers += [nn.Linear(width_in, names["width"]), nn.ReLU()]
        width_in = names["width"]
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
    """``mu`` of one estimator after the first epoch, the training loss measured in the same
    pass (as ``report_convexity`` records it), and the seconds the scoring pass took."""

    mu: float
    seconds: float
    loss: float = math.nan


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
                result = strong_convexity(
                    self._model, batches, nn.CrossEntropyLoss(), estimator=estimator
                )
            seconds = time.perf_counter() - start
            self.compute_seconds += seconds
            self.scores[name] = Score(float(result.mu), seconds, float(result.loss))


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
