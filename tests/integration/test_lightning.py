"""ConvexityCallback with the real Lightning ``Trainer`` on CPU, in both phases of the search."""

from __future__ import annotations

import math
import types
from typing import Any

import pytest


pytest.importorskip(
    "lightning",
    reason='PyTorch Lightning is not installed: pip install -e ".[lightning]" (or ".[test]")',
)

from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import FSDPStrategy
import optuna
from optuna.trial import TrialState
import torch
from torch import nn
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity.hessian import strong_convexity
from optuna_convexity.integration.lightning import ConvexityCallback
from tests.integration import lightning_helpers as helpers


pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*have no `val_dataloader`. Skipping val loop"),
    pytest.mark.filterwarnings("ignore:.*sync_dist=True.*when logging on epoch level"),
]

N_EXAMPLES = 96
BATCH_SIZE = 16
N_BATCHES = N_EXAMPLES // BATCH_SIZE
MAX_EPOCHS = 3


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(n_screening: int, n_promoted: int, pruner: Any = "convexity") -> optuna.Study:
    # The paper's rule, so that the tests know which candidate is promoted (the flattest).
    return optuna.create_study(
        direction="minimize",
        sampler=optuna_convexity.ConvexitySampler(
            n_screening=n_screening, n_promoted=n_promoted, seed=1, criterion="mu"
        ),
        pruner=optuna_convexity.ConvexityPruner() if pruner == "convexity" else pruner,
    )


def _objective(make_callback: Any = None, trainer_options: dict[str, Any] | None = None) -> Any:
    """An objective that records what happened around ``trainer.fit`` in user attributes."""
    data = helpers.dataset(N_EXAMPLES)

    def objective(trial: optuna.Trial) -> float:
        model = helpers.TinyClassifier(
            width=trial.suggest_int("width", 2, 32, log=True),
            lr=trial.suggest_float("lr", 1e-3, 0.5, log=True),
        )
        if make_callback is None:
            callback = ConvexityCallback(trial, nn.CrossEntropyLoss(), monitor="val_loss")
        else:
            callback = make_callback(trial)
        trainer = helpers.trainer([callback], MAX_EPOCHS, **(trainer_options or {}))
        trainer.fit(model, helpers.loader(data, BATCH_SIZE), helpers.loader(data, 48))
        # Reached only if fit returned normally.
        trial.set_user_attr("status", trainer.state.status.value)
        trial.set_user_attr("train_batches", model.train_batches)
        trial.set_user_attr(
            "direct_mu",
            strong_convexity(model, helpers.loader(data, BATCH_SIZE), nn.CrossEntropyLoss()).mu,
        )
        val_loss = trainer.callback_metrics.get("val_loss")
        trial.set_user_attr("val_loss", None if val_loss is None else float(val_loss))
        callback.check_pruned()
        return float(trainer.callback_metrics["val_loss"])

    return objective


def _by_phase(study: optuna.Study) -> tuple[list[Any], list[Any]]:
    trials = study.get_trials()
    return (
        [t for t in trials if optuna_convexity.is_screening(t)],
        [t for t in trials if optuna_convexity.is_promoted(t)],
    )


def test_screening_trials_stop_after_one_epoch_and_promoted_trials_train_in_full() -> None:
    study = _study(n_screening=3, n_promoted=1)
    study.optimize(_objective(), n_trials=5)
    screening, promoted = _by_phase(study)
    assert len(screening) == 4 and len(promoted) == 1  # a second round started with trial 4

    for trial in screening:
        attrs = trial.user_attrs
        assert trial.state == TrialState.PRUNED
        assert attrs["status"] == "finished", "trainer.fit must return normally"
        assert attrs["train_batches"] == N_BATCHES, "screening trains exactly one epoch"
        assert attrs[_attrs.SCORED_BY] == trial.number
        assert attrs[_attrs.N_BATCHES] == N_BATCHES
        assert attrs[_attrs.ESTIMATOR] == "last_layer"
        # The recorded score is the model's score after its one epoch (the data is not
        # shuffled, so the batches are the same).
        assert attrs[_attrs.MU] == pytest.approx(attrs["direct_mu"], rel=1e-6)
        # The one-epoch validation value is kept as the trial's value.
        assert list(trial.intermediate_values) == [0]
        assert trial.value == pytest.approx(attrs["val_loss"])
        assert trial.intermediate_values[0] == trial.value

    (child,) = promoted
    assert child.state == TrialState.COMPLETE
    assert child.user_attrs["train_batches"] == MAX_EPOCHS * N_BATCHES
    assert child.user_attrs.get(_attrs.SCORED_BY) is None, "promoted trials are not scored"
    assert child.intermediate_values == {}, "the callback reports nothing in promoted trials"
    round_0 = [t for t in screening if t.user_attrs[_attrs.ROUND] == 0]
    flattest = min(round_0, key=lambda t: t.user_attrs[_attrs.MU])
    assert child.user_attrs[_attrs.PARENT] == flattest.number
    assert child.params == flattest.params
    assert study.best_trial.number == child.number


def test_any_pruner_and_no_monitor() -> None:
    study = _study(n_screening=2, n_promoted=1, pruner=optuna.pruners.NopPruner())
    study.optimize(
        _objective(lambda trial: ConvexityCallback(trial, nn.functional.cross_entropy)),
        n_trials=3,
    )
    screening, promoted = _by_phase(study)
    for trial in screening:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["train_batches"] == N_BATCHES
        assert trial.user_attrs[_attrs.MU] == pytest.approx(trial.user_attrs["direct_mu"])
        assert trial.value is None and trial.intermediate_values == {}
    assert promoted[0].state == TrialState.COMPLETE


def test_optuna_pruning_callback_is_wrapped_for_promoted_trials() -> None:
    integration = pytest.importorskip(
        "optuna_integration", reason="optuna-integration is not installed"
    )

    def make_callback(trial: optuna.Trial) -> ConvexityCallback:
        pruning = integration.PyTorchLightningPruningCallback(trial, monitor="val_loss")
        callback = ConvexityCallback(trial, "loss_fn", pruning_callback=pruning)
        assert callback.monitor == "val_loss", "the monitor defaults to the pruning callback's"
        return callback

    # Promoted trials see a pruner that prunes at the first step after its warm-up.
    pruner = optuna_convexity.ConvexityPruner(
        optuna.pruners.ThresholdPruner(upper=-1.0, n_warmup_steps=1)
    )
    study = _study(n_screening=2, n_promoted=1, pruner=pruner)
    study.optimize(_objective(make_callback), n_trials=3)
    screening, (child,) = _by_phase(study)

    for trial in screening:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["train_batches"] == N_BATCHES
        assert list(trial.intermediate_values) == [0]
    # The wrapped callback reported epochs 0 and 1 and pruned at 1; fit still returned.
    assert child.state == TrialState.PRUNED
    assert child.user_attrs["status"] == "finished"
    assert list(child.intermediate_values) == [0, 1]
    assert child.user_attrs["train_batches"] == 2 * N_BATCHES
    assert child.value == child.intermediate_values[1]


def test_hooks_are_passed_on_outside_screening_trials_only() -> None:
    recorders: dict[int, helpers.Recorder] = {}

    def make_callback(trial: optuna.Trial) -> ConvexityCallback:
        recorders[trial.number] = helpers.Recorder()
        return ConvexityCallback(trial, "loss_fn", pruning_callback=recorders[trial.number])

    study = _study(n_screening=2, n_promoted=1)
    study.optimize(_objective(make_callback), n_trials=3)

    # What the recorder sees when it is given to the Trainer directly.
    reference = helpers.Recorder()
    data = helpers.dataset(N_EXAMPLES)
    helpers.trainer([reference], MAX_EPOCHS).fit(
        helpers.TinyClassifier(),
        helpers.loader(data, BATCH_SIZE),
        helpers.loader(data, 48),
    )
    assert recorders[0].calls == [] and recorders[1].calls == []
    assert recorders[2].calls == reference.calls
    assert reference.calls.count("on_train_batch_end") == MAX_EPOCHS * N_BATCHES


def test_outside_a_convexity_search_the_callback_only_runs_the_pruning_callback() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recorder = helpers.Recorder()
    study.optimize(
        _objective(lambda trial: ConvexityCallback(trial, "loss_fn", pruning_callback=recorder)),
        n_trials=1,
    )
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["train_batches"] == MAX_EPOCHS * N_BATCHES
    assert _attrs.MU not in trial.user_attrs
    assert recorder.calls.count("on_train_epoch_end") == MAX_EPOCHS

    fixed = optuna.trial.FixedTrial({"width": 4, "lr": 0.1})
    assert _objective()(fixed) > 0  # check_pruned() returns: nothing to end


def _screening_trial() -> optuna.Trial:
    study = _study(n_screening=2, n_promoted=1)
    trial = study.ask()
    assert optuna_convexity.is_screening(trial)
    return trial


@pytest.mark.parametrize(
    ("options", "input_scale", "expected_batches"),
    [
        pytest.param({"model": "net"}, 1.0, N_BATCHES, id="submodule-by-name"),
        pytest.param({"max_batches": 2}, 1.0, 2, id="max_batches"),
        pytest.param({}, 3.0, N_BATCHES, id="batch-transfer-hooks"),
        pytest.param({"_dict_batches": True}, 1.0, N_BATCHES, id="dict-batches-batch_fn"),
        pytest.param({"_limit_train_batches": 2}, 1.0, 2, id="limit_train_batches"),
    ],
)
def test_what_is_scored(
    options: dict[str, Any], input_scale: float, expected_batches: int
) -> None:
    trial = _screening_trial()
    data = helpers.dataset(N_EXAMPLES)
    dict_batches = options.pop("_dict_batches", False)
    limit = options.pop("_limit_train_batches", None)
    if dict_batches:
        options["batch_fn"] = lambda batch: (batch["x"], batch["y"])
    callback = ConvexityCallback(trial, "loss_fn", **options)
    model = helpers.TinyClassifier(input_scale=input_scale)
    train = helpers.DictDataset(data) if dict_batches else data
    extra = {} if limit is None else {"limit_train_batches": limit}
    helpers.trainer([callback], **extra).fit(model, helpers.loader(train, BATCH_SIZE))
    with pytest.raises(optuna.TrialPruned):
        callback.check_pruned()

    # The same score, computed directly on the batches the training saw.
    scaled = torch.utils.data.TensorDataset(data.tensors[0] * input_scale, data.tensors[1])
    expected = strong_convexity(
        model.net,
        helpers.loader(scaled, BATCH_SIZE),
        nn.CrossEntropyLoss(),
        max_batches=expected_batches,
    )
    assert trial.user_attrs[_attrs.N_BATCHES] == expected_batches
    assert callback.mu == pytest.approx(expected.mu, rel=1e-6)
    assert trial.user_attrs[_attrs.MU] == pytest.approx(expected.mu, rel=1e-6)


def test_estimator_override_and_a_second_fit_keeps_the_score() -> None:
    trial = _screening_trial()
    data = helpers.dataset(N_EXAMPLES)
    callback = ConvexityCallback(trial, "loss_fn", estimator="paper")
    model = helpers.TinyClassifier()
    helpers.trainer([callback]).fit(model, helpers.loader(data, BATCH_SIZE))
    assert trial.user_attrs[_attrs.ESTIMATOR].startswith("paper")
    first = callback.mu
    helpers.trainer([callback]).fit(model, helpers.loader(data, BATCH_SIZE))
    assert callback.mu == first, "a trial is scored once, as report_convexity does"


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": 3}, TypeError, "loss_fn must be the training loss"),
        ({"monitor": 1}, TypeError, "monitor must be"),
        ({"pruning_callback": object()}, TypeError, "PyTorchLightningPruningCallback"),
        ({"model": 3}, TypeError, "model must be"),
        ({"dataloader": 3}, TypeError, "dataloader must be an iterable"),
        ({"batch_fn": 3}, TypeError, "batch_fn must be callable"),
        ({"estimator": "flat"}, ValueError, "Unknown estimator"),
        ({"max_batches": 0}, ValueError, "max_batches must be a positive integer"),
        ({"max_examples": True}, ValueError, "max_examples must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    arguments: dict[str, Any] = {"loss_fn": nn.CrossEntropyLoss(), **kwargs}
    with pytest.raises(error, match=match):
        ConvexityCallback(_screening_trial(), **arguments)


def test_bad_trial_and_nested_callback() -> None:
    with pytest.raises(TypeError, match="trial must be"):
        ConvexityCallback("trial", nn.CrossEntropyLoss())  # type: ignore[arg-type]
    trial = _screening_trial()
    inner = ConvexityCallback(trial, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="cannot be another ConvexityCallback"):
        ConvexityCallback(trial, nn.CrossEntropyLoss(), pruning_callback=inner)


def _fit_screening(callback_kwargs: dict[str, Any], **trainer_kwargs: Any) -> ConvexityCallback:
    callback = ConvexityCallback(_screening_trial(), **callback_kwargs)
    data = helpers.dataset(N_EXAMPLES)
    helpers.trainer([callback], **trainer_kwargs).fit(
        helpers.TinyClassifier(), helpers.loader(data, BATCH_SIZE), helpers.loader(data, 48)
    )
    return callback


def test_misconfigured_screening_trials_fail_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"'val_los' was not logged .*val_acc, val_loss"):
        _fit_screening({"loss_fn": "loss_fn", "monitor": "val_los"})
    with pytest.raises(ValueError, match="names no callable attribute"):
        _fit_screening({"loss_fn": "criterion"})
    with pytest.raises(ValueError, match="has no submodule 'body'"):
        _fit_screening({"loss_fn": "loss_fn", "model": "body"})
    with pytest.raises(ValueError, match=r"min_epochs=2.*is_screening\(trial\)"):
        _fit_screening({"loss_fn": "loss_fn"}, min_epochs=2)
    with pytest.raises(ValueError, match=r"min_steps=20"):
        _fit_screening({"loss_fn": "loss_fn"}, min_steps=20)


def test_check_pruned_explains_a_missing_score() -> None:
    callback = ConvexityCallback(_screening_trial(), nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match=r"pass it to Trainer\(callbacks=\[\.\.\.\]\)"):
        callback.check_pruned()
    no_epoch = _fit_screening({"loss_fn": "loss_fn"}, limit_train_batches=0)
    with pytest.raises(RuntimeError, match="returned without ending a training epoch"):
        no_epoch.check_pruned()


def test_several_training_dataloaders_need_a_choice() -> None:
    data = helpers.dataset(N_EXAMPLES)
    callback = ConvexityCallback(_screening_trial(), "loss_fn")
    with pytest.raises(ValueError, match="Pass dataloader= the one to score"):
        helpers.trainer([callback]).fit(
            helpers.TinyClassifier(),
            [helpers.loader(data, BATCH_SIZE), helpers.loader(data, BATCH_SIZE)],
        )


def test_strategies_that_split_the_model_or_lose_the_score_are_refused() -> None:
    module = helpers.TinyClassifier()

    def fake_trainer(strategy: Any, world_size: int) -> Any:
        return types.SimpleNamespace(strategy=strategy, world_size=world_size, min_epochs=None)

    callback = ConvexityCallback(_screening_trial(), "loss_fn")  # in-memory storage
    with pytest.raises(ValueError, match="FSDPStrategy: each process holds only part"):
        callback.on_fit_start(fake_trainer(FSDPStrategy(), 2), module)
    with pytest.raises(ValueError, match="storage must be shared between processes"):
        callback.on_fit_start(fake_trainer(DDPStrategy(), 2), module)
    # Promoted trials are not scored, so any strategy is fine there.
    promoted = optuna.trial.FixedTrial({})
    ConvexityCallback(promoted, "loss_fn").on_fit_start(fake_trainer(FSDPStrategy(), 2), module)


# -- DDP -----------------------------------------------------------------------------------


def _ddp_objective(trial: optuna.Trial) -> float:
    data = helpers.dataset(N_EXAMPLES)
    model = helpers.TinyClassifier(width=trial.suggest_int("width", 2, 32, log=True))
    callback = ConvexityCallback(trial, nn.CrossEntropyLoss(), monitor="val_loss")
    trainer = helpers.trainer(
        [callback], MAX_EPOCHS, devices=2, strategy="ddp_spawn", enable_model_summary=False
    )
    trainer.fit(model, helpers.loader(data, BATCH_SIZE), helpers.loader(data, 48))
    # ddp_spawn loads rank 0's weights into this process's model. Each rank scored its shard:
    # what Lightning's DistributedSampler gives it in the first epoch (shuffled, seed 0).
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        shard = helpers.loader(Subset(data, list(sampler)), BATCH_SIZE)
        shards.append(strong_convexity(model, shard, nn.CrossEntropyLoss()).mu)
    trial.set_user_attr("shard_mu", shards)
    callback.check_pruned()
    return 0.0


@pytest.mark.slow
def test_ddp_spawn_every_rank_scores_its_shard_and_rank_zero_records(tmp_path: Any) -> None:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    )
    study = optuna.create_study(
        storage=storage,
        sampler=optuna_convexity.ConvexitySampler(n_screening=2, n_promoted=1, seed=0),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(_ddp_objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[_attrs.SCORED_BY] == 0
    # 96 examples, 2 ranks, batches of 16: 3 batches per rank.
    assert trial.user_attrs[_attrs.N_BATCHES] == 2 * math.ceil(N_EXAMPLES / 2 / BATCH_SIZE)
    assert trial.user_attrs[_attrs.MU] == pytest.approx(max(trial.user_attrs["shard_mu"]))
    assert list(trial.intermediate_values) == [0]
    assert trial.value == trial.intermediate_values[0]
