"""Plotly figures of a :class:`~optuna_convexity.ConvexitySampler` search.

In the style of :mod:`optuna.visualization`: each function takes a study (from memory or loaded
from its storage while the search runs) and returns a :class:`plotly.graph_objects.Figure`.
The figures are drawn from :func:`optuna_convexity.summarize`, like the leaderboard, and are the
ones the search keeps in optuna-dashboard (the ``dashboard`` extra).

- :func:`plot_screening`: ``mu`` of every screening candidate, with the promotion cut-off.
- :func:`plot_mu_vs_value`: the promoted trials' objective values against their ``mu``.
"""

from optuna_convexity.visualization._mu_vs_value import plot_mu_vs_value
from optuna_convexity.visualization._plotly_imports import is_available
from optuna_convexity.visualization._screening import plot_screening


__all__ = ["is_available", "plot_mu_vs_value", "plot_screening"]
