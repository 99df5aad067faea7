"""optuna-convexity: strong-convexity-guided hyper-parameter search for Optuna.

- :class:`ConvexitySampler` runs the two-phase search in an ordinary Optuna study: cheap
  screening trials scored by the flatness of their loss, then the best of them by the
  sampler's ``criterion`` promoted to full training.
- :class:`ConvexityPruner` ends screening trials at the screening fidelity.
- :func:`report_convexity` is the line to add to an objective; :func:`record_mu` records a
  score computed elsewhere; :func:`is_screening` and :func:`is_promoted` tell the phases apart.
- :class:`ProgressCallback` shows a search's progress on one live line (``study.optimize``'s
  ``callbacks``); the ``optuna-convexity`` command prints a stored search's leaderboard.
- :func:`summarize` and :func:`leaderboard` report the rounds of a search;
  :func:`fail_running_trials` recovers a search on a storage without heartbeat after its
  workers were stopped.
- :mod:`optuna_convexity.hessian` is the pure-PyTorch scoring module.

Trial attributes written by the search (``user_attrs``, shown by optuna-dashboard): these
names are the public contract (defined once, with their readers, in ``_attrs``):

========================================  ===================================================
``convexity:phase``                       ``"screening"``, ``"promoted"``, or ``"withdrawn"``
                                          (gave its promotion back before running)
``convexity:promoted``                    1 on promoted trials, 0 on the others (int)
``convexity:round``                       round number (int)
``convexity:slot``                        screening position in the round (int)
``convexity:mu``                          score (float; absent if not finite, see
                                          ``convexity:excluded``); promoted trials carry
                                          their parent's
``convexity:train_loss``                  mean training loss where ``mu`` was computed (float)
``convexity:estimator``                   how ``mu`` was computed (str)
``convexity:n_batches``                   batches scored (int)
``convexity:n_nonfinite_batches``         batches left out as non-finite (int)
``convexity:scored_by``                   trial number that computed ``mu`` (int)
``convexity:parent``                      promoted: the screening trial rerun (int)
``convexity:rank``                        promoted: 1 = ranked first (int)
``convexity:excluded``                    why a candidate cannot be promoted (str)
``convexity:lease``                       a *system* attribute of running trials on storages
                                          without heartbeat: when its worker last refreshed
                                          the trial's lease (str, ISO 8601 UTC)
========================================  ===================================================
"""

from optuna_convexity import _dashboard
from optuna_convexity import _listeners
from optuna_convexity import _summary
from optuna_convexity import hessian
from optuna_convexity._progress import ProgressCallback
from optuna_convexity._pruner import ConvexityPruner
from optuna_convexity._recovery import fail_running_trials
from optuna_convexity._report import is_promoted
from optuna_convexity._report import is_screening
from optuna_convexity._report import record_mu
from optuna_convexity._report import report_convexity
from optuna_convexity._sampler import ConvexitySampler
from optuna_convexity._state import ScreeningWaitError
from optuna_convexity._summary import leaderboard
from optuna_convexity._summary import Promotion
from optuna_convexity._summary import RoundSummary
from optuna_convexity._summary import ScreenedCandidate
from optuna_convexity._summary import summarize
from optuna_convexity._version import __version__


# The dashboard follows the search from every worker: the search tells its listeners, and
# never imports the dashboard (the arrow runs from the presentation to the search).
_listeners.subscribe(_dashboard.refresh)
# The worker that completes a round's last promotion logs how its criterion's premise held.
_listeners.subscribe(_summary.log_premise)


__all__ = [
    "ConvexityPruner",
    "ConvexitySampler",
    "ProgressCallback",
    "Promotion",
    "RoundSummary",
    "ScreenedCandidate",
    "ScreeningWaitError",
    "__version__",
    "fail_running_trials",
    "hessian",
    "is_promoted",
    "is_screening",
    "leaderboard",
    "record_mu",
    "report_convexity",
    "summarize",
]
