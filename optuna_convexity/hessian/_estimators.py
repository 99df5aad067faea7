"""The estimators by name: what ``estimator="last_layer"`` and its siblings stand for."""

from __future__ import annotations

from collections.abc import Callable

from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._hutchinson import HutchinsonEstimator
from optuna_convexity.hessian._last_layer import LastLayerEstimator
from optuna_convexity.hessian._paper import PaperEstimator


_NAMED: dict[str, Callable[[], BaseHessianNormEstimator]] = {
    "paper": PaperEstimator,
    "last_layer": LastLayerEstimator,
    "hutchinson": HutchinsonEstimator,
}

ESTIMATOR_NAMES = tuple(_NAMED)


def get_estimator(estimator: str | BaseHessianNormEstimator) -> BaseHessianNormEstimator:
    """Turn a name into an estimator with default settings; pass instances through."""
    if isinstance(estimator, BaseHessianNormEstimator):
        return estimator
    if isinstance(estimator, str) and estimator in _NAMED:
        return _NAMED[estimator]()
    raise ValueError(
        f"Unknown estimator {estimator!r}. Use one of {', '.join(map(repr, _NAMED))}, or an "
        "instance such as HutchinsonEstimator(n_probes=64)."
    )
