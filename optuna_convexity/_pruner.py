"""End screening trials at the cheap fidelity; leave promoted trials to the user's pruner."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs


class ConvexityPruner(BasePruner):
    """Prunes screening trials once they are scored, and nothing else by itself.

    Inside an ordinary ``trial.report(value, step)`` / ``trial.should_prune()`` loop:

    - a **screening** trial is pruned at the first ``should_prune()`` after
      :func:`~optuna_convexity.report_convexity` scored it, so it ends at the one-epoch
      fidelity with its last reported value (the dashboard shows that value next to ``mu``);
    - a **promoted** trial is never pruned, unless ``pruner`` is given: then that pruner decides,
      seeing only the promoted trials of the study (not the one-epoch screening trials);
    - a withdrawn trial (one that gave its promotion back) is pruned at once.

    Args:
        pruner:
            An Optuna pruner for promoted trials, e.g. ``optuna.pruners.MedianPruner()``.

    Example:

        .. code-block:: python

            import optuna
            import optuna_convexity

            study = optuna.create_study(
                sampler=optuna_convexity.ConvexitySampler(),
                pruner=optuna_convexity.ConvexityPruner(optuna.pruners.MedianPruner()),
            )
    """

    def __init__(self, pruner: BasePruner | None = None) -> None:
        if pruner is not None and not isinstance(pruner, BasePruner):
            raise TypeError(
                f"pruner must be an Optuna pruner (optuna.pruners.BasePruner), got "
                f"{type(pruner).__name__}."
            )
        self._pruner = pruner

    @property
    def pruner(self) -> BasePruner | None:
        """The pruner that decides for promoted trials, if any."""
        return self._pruner

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        phase = trial.user_attrs.get(_attrs.PHASE)
        if phase == _attrs.PHASE_SCREENING:
            return trial.user_attrs.get(_attrs.SCORED_BY) == trial.number
        if phase == _attrs.PHASE_WITHDRAWN:
            return True
        if self._pruner is None:
            return False
        if phase == _attrs.PHASE_PROMOTED:
            return self._pruner.prune(_promoted_view(study, self._pruner), trial)
        return self._pruner.prune(study, trial)


class _PromotedTrialsStorage:
    """A read view of a storage that lists only promoted trials (everything else delegated).

    A storage-level view, rather than a ``Study`` subclass, so that pruners which build their
    own study objects from ``study._storage`` (``HyperbandPruner``'s brackets) see it too.
    """

    def __init__(self, storage: Any) -> None:
        self._backend = storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return [
            t
            for t in self._backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)
            if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
        ]


def _promoted_view(study: Study, pruner: BasePruner) -> Study:
    return optuna.study.Study(
        study_name=study.study_name,
        storage=_PromotedTrialsStorage(study._storage),  # type: ignore[arg-type]
        sampler=study.sampler,
        pruner=pruner,
    )
