"""Keep optuna-dashboard's view of a convexity search up to date (the ``dashboard`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
import logging

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


_logger = logging.getLogger(__name__)

Finishing = tuple[FrozenTrial, TrialState, Sequence[float] | None]


def refresh(study: optuna.Study, finishing: Finishing | None = None) -> None:
    """Rewrite the study's dashboard note and figures from the study's current state.

    ``finishing`` is a trial whose result is being told right now (the sampler's
    ``after_trial`` runs before Optuna stores it), with its final state and values.
    """
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        _logger.debug("optuna-dashboard is not installed: no dashboard note or figures.")
        return
