"""optuna-convexity on OptunaHub: strong-convexity-guided search for PyTorch objectives.

This package re-exports the public classes and functions of the ``optuna-convexity`` package
(``pip install optuna-convexity``, see ``requirements.txt``); the README explains them.
"""

from __future__ import annotations

from optuna_convexity import ConvexityPruner
from optuna_convexity import ConvexitySampler
from optuna_convexity import is_promoted
from optuna_convexity import is_screening
from optuna_convexity import leaderboard
from optuna_convexity import ProgressCallback
from optuna_convexity import record_mu
from optuna_convexity import report_convexity
from optuna_convexity import summarize


__all__ = [
    "ConvexityPruner",
    "ConvexitySampler",
    "ProgressCallback",
    "is_promoted",
    "is_screening",
    "leaderboard",
    "record_mu",
    "report_convexity",
    "summarize",
]
