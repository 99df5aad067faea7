"""The OptunaHub package in hub/samplers/convexity, loaded as OptunaHub loads it, offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import optuna
from optuna.trial import TrialState
import pytest
import yaml

import optuna_convexity


optunahub = pytest.importorskip("optunahub", reason='needs optunahub: pip install -e ".[test]"')
pytest.importorskip("sklearn", reason='needs scikit-learn: pip install -e ".[test]"')

REGISTRY = Path(__file__).resolve().parents[2] / "hub"
PACKAGE = REGISTRY / "samplers" / "convexity"


def _load() -> ModuleType:
    module: ModuleType = optunahub.load_local_module(
        "samplers/convexity", registry_root=str(REGISTRY)
    )
    return module


def test_registry_layout() -> None:
    assert {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))} == {
        "__init__.py",
        "README.md",
        "LICENSE",
        "example.py",
        "requirements.txt",
    }
    readme = (PACKAGE / "README.md").read_text()
    _, front, body = readme.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert set(meta) == {"author", "title", "description", "tags", "optuna_versions", "license"}
    assert all(isinstance(meta[k], str) and meta[k] for k in ("author", "title", "description"))
    assert {"sampler", "pruner"} <= set(meta["tags"])
    assert meta["license"] == "MIT License"
    assert optuna.__version__ in [str(v) for v in meta["optuna_versions"]]
    for section in ("## Abstract", "## APIs", "## Installation", "## Example"):
        assert section in body
    assert (PACKAGE / "LICENSE").read_text().startswith("MIT License\n")
    requirements = (PACKAGE / "requirements.txt").read_text().split()
    assert "optuna-convexity" in requirements


def test_exports_the_public_api() -> None:
    module = _load()
    assert module.__name__ == "optunahub_registry.package.samplers.convexity"
    for name in module.__all__:
        assert getattr(module, name) is getattr(optuna_convexity, name)
    assert {"ConvexitySampler", "ConvexityPruner", "report_convexity"} <= set(module.__all__)


def test_example_runs_one_round(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("hub_example", PACKAGE / "example.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # __name__ is not "__main__": nothing is downloaded
    study = example.run(_load(), n_screening=4, n_promoted=1, epochs=2)
    (round_,) = optuna_convexity.summarize(study)
    assert round_.screening_done and len(round_.candidates) == 4
    (promotion,) = round_.promotions
    assert promotion.state == TrialState.COMPLETE and promotion.rank == 1
    assert study.best_trial.number == promotion.number
    assert (
        "### Round 0: 4 screened (screening done, 4 valid), 1 promoted" in capsys.readouterr().out
    )
