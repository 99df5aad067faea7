"""Integrations of the convexity search with training frameworks, each an optional extra.

- :mod:`optuna_convexity.integration.lightning`: :class:`ConvexityCallback` for PyTorch
  Lightning (``pip install "optuna-convexity[lightning]"``).

Importing this package imports no framework: ``optuna_convexity.integration.ConvexityCallback``
imports Lightning on first use, and raises :class:`ImportError` naming the extra to install if
it is missing.
"""

from __future__ import annotations

import importlib
from typing import Any
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from optuna_convexity.integration import lightning
    from optuna_convexity.integration.lightning import ConvexityCallback

#: Public name -> the submodule that defines it.
_LAZY = {"ConvexityCallback": "lightning", "lightning": "lightning"}

__all__ = ["ConvexityCallback", "lightning"]


def __getattr__(name: str) -> Any:
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{submodule}")
    return module if name == submodule else getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
