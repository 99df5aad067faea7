"""Hessian-norm scores of a PyTorch model's loss, on its own device (pure PyTorch).

The main entry point is :func:`strong_convexity`, the supremum over mini-batches of an estimate
of the Frobenius norm of the loss's Hessian. Three estimators are available:

- :class:`LastLayerEstimator` (``"last_layer"``, the default): exact norm of the Hessian in the
  last ``nn.Linear`` layer's parameters, in closed form, at about the cost of a forward pass.
- :class:`HutchinsonEstimator` (``"hutchinson"``): the whole network, from batched
  Hessian-vector products (Hutchinson or Hutch++).
- :class:`PaperEstimator` (``"paper"``): the authors' scale-dependent closed form, for faithful
  reproduction.

:func:`hessian_eigenvalue` and :func:`hessian_trace` are the usual sharpness diagnostics.

This subpackage imports only PyTorch.
"""

from optuna_convexity.hessian._base import BaseHessianNormEstimator
from optuna_convexity.hessian._base import BatchScorer
from optuna_convexity.hessian._base import LossFunction
from optuna_convexity.hessian._diagnostics import hessian_eigenvalue
from optuna_convexity.hessian._diagnostics import hessian_trace
from optuna_convexity.hessian._estimators import ESTIMATOR_NAMES
from optuna_convexity.hessian._estimators import get_estimator
from optuna_convexity.hessian._head import LastLayer
from optuna_convexity.hessian._hutchinson import HutchinsonEstimator
from optuna_convexity.hessian._last_layer import LastLayerEstimator
from optuna_convexity.hessian._paper import PaperEstimator
from optuna_convexity.hessian._strong_convexity import strong_convexity
from optuna_convexity.hessian._strong_convexity import StrongConvexity


__all__ = [
    "ESTIMATOR_NAMES",
    "BaseHessianNormEstimator",
    "BatchScorer",
    "HutchinsonEstimator",
    "LastLayer",
    "LastLayerEstimator",
    "LossFunction",
    "PaperEstimator",
    "StrongConvexity",
    "get_estimator",
    "hessian_eigenvalue",
    "hessian_trace",
    "strong_convexity",
]
