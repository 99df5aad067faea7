"""The integration package imports no framework until asked, and names the extra to install."""

from __future__ import annotations

import importlib
import sys

import pytest

import optuna_convexity


_OURS = (
    "optuna_convexity.integration",
    "optuna_convexity.integration.lightning",
    "optuna_convexity.integration._lightning",
    "optuna_convexity.integration._lightning_scoring",
)


def _fresh_import(monkeypatch: pytest.MonkeyPatch, without_lightning: bool) -> object:
    """Import ``optuna_convexity.integration`` anew; everything is restored after the test."""
    for name in _OURS:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    if hasattr(optuna_convexity, "integration"):
        monkeypatch.delattr(optuna_convexity, "integration")
    if without_lightning:
        for name in list(sys.modules):
            if name == "lightning" or name.startswith("lightning."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "lightning", None)  # makes `import lightning` fail
    return importlib.import_module("optuna_convexity.integration")


def test_missing_lightning_gives_an_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    integration = _fresh_import(monkeypatch, without_lightning=True)
    assert "ConvexityCallback" in dir(integration)
    with pytest.raises(ImportError, match=r'pip install "optuna-convexity\[lightning\]"'):
        integration.ConvexityCallback  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Callback'"):
        integration.Callback  # type: ignore[attr-defined]  # noqa: B018


def test_the_callback_is_reachable_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lightning", reason="PyTorch Lightning is not installed")
    integration = _fresh_import(monkeypatch, without_lightning=False)
    from optuna_convexity.integration.lightning import ConvexityCallback

    assert integration.ConvexityCallback is ConvexityCallback  # type: ignore[attr-defined]
    assert integration.lightning.ConvexityCallback is ConvexityCallback  # type: ignore[attr-defined]
