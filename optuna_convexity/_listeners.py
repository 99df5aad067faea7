"""How the search tells what shows it (the dashboard) that something worth showing happened.

The search never imports its presentation: a presentation layer subscribes a listener here
(the package root subscribes :func:`optuna_convexity._dashboard.refresh`), and the search
notifies every listener when it decides a promotion and when a promoted trial ends, in every
worker. A listener that fails is logged and never disturbs the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState


_logger = optuna.logging.get_logger(__name__)

#: A trial whose result is being told right now (the sampler's ``after_trial`` runs before
#: Optuna stores it), with its final state and values.
Finishing = tuple[FrozenTrial, TrialState, Sequence[float] | None]


class SearchListener(Protocol):
    """Called with the study, and the trial being told if one is (see :data:`Finishing`)."""

    def __call__(self, study: Study, finishing: Finishing | None = None, /) -> None: ...


_listeners: list[SearchListener] = []


def subscribe(listener: SearchListener) -> None:
    """Call ``listener`` at every notification of this process (once, however often it is
    subscribed)."""
    if listener not in _listeners:
        _listeners.append(listener)


def notify(study: Study, finishing: Finishing | None = None) -> None:
    """Tell every listener; the search matters more than its display."""
    for listener in list(_listeners):
        try:
            listener(study, finishing)
        except Exception:
            name = f"{getattr(listener, '__module__', '')}.{getattr(listener, '__qualname__', '')}"
            _logger.warning(
                f"The search's listener {name} failed (e.g. the dashboard note and figures "
                "could not be updated); the search goes on.",
                exc_info=True,
            )
