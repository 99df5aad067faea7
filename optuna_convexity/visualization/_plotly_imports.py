"""The plotly import, deferred: the package works without plotly, the plots say what to install."""

from __future__ import annotations

import importlib
from typing import Any


#: ``plotly.graph_objects``, or ``None`` without plotly.
go: Any = None
_import_error: ImportError | None = None
try:
    go = importlib.import_module("plotly.graph_objects")
except ImportError as error:  # the ``dashboard`` extra is not installed
    _import_error = error


def is_available() -> bool:
    """Whether the figures of :mod:`optuna_convexity.visualization` can be drawn (plotly is
    installed).

    Example:

        .. code-block:: python

            from optuna_convexity import visualization

            if visualization.is_available():
                visualization.plot_screening(study).show()
    """
    return _import_error is None


def check(function: str) -> None:
    """Raise a clear :class:`ImportError` if plotly is missing."""
    if _import_error is not None:
        raise ImportError(
            f"optuna_convexity.visualization.{function} needs plotly, which could not be "
            f"imported ({_import_error}). Install it with `pip install plotly` or "
            "`pip install 'optuna-convexity[dashboard]'`.",
            name="plotly",
        ) from _import_error
