"""Names of the trial attributes the search writes (``user_attrs``, shown by optuna-dashboard).

These names and their types are part of the public contract: dashboards, notebooks and the
tests of users' own tooling may rely on them.
"""

from __future__ import annotations


#: ``"screening"``, ``"promoted"``, or ``"withdrawn"`` (a trial that gave its promotion back
#: before running anything, see ``EXCLUDED`` for why; it ends PRUNED at its first suggestion).
PHASE = "convexity:phase"
#: The round (0, 1, ...) the trial belongs to; a round is ``n_screening`` screening trials
#: followed by ``n_promoted`` promoted ones.
ROUND = "convexity:round"
#: Screening trials: the position (0 to ``n_screening - 1``) in the round; absent for
#: trials enqueued with ``study.enqueue_trial``, which are screened in addition.
SLOT = "convexity:slot"
#: Screening trials: the score, a float (``None`` when it was not finite). Promoted trials:
#: their parent's score.
MU = "convexity:mu"
#: Screening trials: the mean training loss of the model as it was scored, from the same
#: forward passes (a float; absent when it was not finite or the score came from elsewhere).
TRAIN_LOSS = "convexity:train_loss"
#: The trial number that computed ``MU`` (a retried trial inherits the attributes of the
#: attempt it repeats, so this tells a fresh score from an inherited one).
SCORED_BY = "convexity:scored_by"
#: A description of the estimator, e.g. ``"last_layer"`` or ``"hutchinson(n_probes=16, ...)"``.
ESTIMATOR = "convexity:estimator"
#: Batches scored, and how many of them were left out as non-finite.
N_BATCHES = "convexity:n_batches"
N_NONFINITE_BATCHES = "convexity:n_nonfinite_batches"
#: Promoted trials: the number of the screening trial whose parameters they use.
PARENT = "convexity:parent"
#: Promoted trials: the rank of the parent among the round's candidates, 1 = flattest.
RANK = "convexity:rank"
#: Screening trials that cannot be promoted, and withdrawn trials: why, in words.
EXCLUDED = "convexity:excluded"

PHASE_SCREENING = "screening"
PHASE_PROMOTED = "promoted"
PHASE_WITHDRAWN = "withdrawn"
