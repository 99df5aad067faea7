"""Recovering a search on a storage without heartbeat after its workers were stopped."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from optuna_convexity import _state
from optuna_convexity._roles import assign_roles


def fail_running_trials(study: optuna.Study) -> list[int]:
    """Fail the trials that stopped workers left RUNNING, and requeue their promotions.

    On a storage without heartbeat (``JournalStorage``, ``GrpcStorageProxy``, or
    ``RDBStorage`` without ``heartbeat_interval``), a worker that is killed, or interrupted at
    an unlucky moment, leaves its trial RUNNING, and a RUNNING screening trial holds its
    round's promotions. The running workers find such a trial by its lease and requeue it
    after the sampler's ``lease_grace_period``; this function does it at once for a search
    whose workers are all stopped. After stopping **every** worker, call this once, then
    start the workers again: screening trials are failed (their candidates are excluded), and
    promotions, decided or not, are failed and queued again with the same rank, as Optuna's
    ``RetryHeartbeatStaleTrialCallback`` would do on a storage with heartbeat.

    Do not call it while workers are running: it cannot tell a live trial from a dead one.

    The search's settings (``n_screening``, ``n_promoted``, ...) are read from the study,
    where its first worker stored them, so the study may be loaded without a sampler; a
    :class:`ConvexitySampler` with other settings is refused, as it would tell promotions
    from screening trials differently from the workers.

    Args:
        study: The study, loaded with its :class:`ConvexitySampler` or without a sampler.

    Returns:
        The numbers of the trials it failed.

    Example:

        .. code-block:: python

            study = optuna.load_study(study_name="search", storage=storage, sampler=sampler)
            optuna_convexity.fail_running_trials(study)  # every worker is stopped
    """
    stored = _state.stored_search_config(study)
    passed = _state.sampler_config(study)
    if stored is not None and passed is not None and passed != stored:
        different = {
            key: (value, passed.as_dict()[key])
            for key, value in stored.as_dict().items()
            if passed.as_dict()[key] != value
        }
        raise ValueError(
            f"Study {study.study_name!r} runs a convexity search with {stored.as_dict()}, but "
            f"the ConvexitySampler it was loaded with differs in {different} (stored, passed): "
            "it would take other trials for promotions than the workers did. Load the study "
            "with the workers' sampler settings, or without a sampler (the settings are read "
            "from the study)."
        )
    if stored is None and passed is None:
        raise ValueError(
            f"Study {study.study_name!r} holds no settings of a convexity search, and "
            "fail_running_trials needs the study's ConvexitySampler settings to tell promotions "
            "apart (its first worker stores them): load the study with "
            "sampler=ConvexitySampler(n_screening, n_promoted, ...)."
        )
    config = stored if stored is not None else _state.config_of(study)
    storage = study._storage
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    roles = assign_roles(trials, config.n_screening, config.n_promoted, config.asynchronous)
    failed = []
    for trial in trials:
        if trial.state != TrialState.RUNNING or not _state.fail(study, trial):
            continue
        failed.append(trial.number)
        role = roles.get(trial.number)
        if role is not None and role.phase == "promoted":  # its worker was stopped
            limit = _state.retry_limit(None, started=False, promotion_retries=0)
            _state.requeue(study, storage.get_trial(trial._trial_id), limit)
    return failed
