"""optuna-convexity: strong-convexity-guided hyper-parameter search for Optuna."""

from optuna_convexity import hessian
from optuna_convexity._version import __version__

__all__ = ["__version__", "hessian"]
