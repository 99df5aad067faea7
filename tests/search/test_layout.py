"""The package's structure: one home for each concept, and dependencies that run one way."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
import re
import textwrap
from typing import Any

import pytest
import torch

import optuna_convexity
from optuna_convexity import _attrs


PACKAGE = Path(optuna_convexity.__file__).parent

#: Each module's layer: a module may import modules of its own layer or of lower ones only.
#: The pure Hessian module and the pure rules at the bottom, the round logic above them, the
#: stored state, the barrier and asynchronous promotion, the sampler, what reads a search,
#: and presentation on top.
LAYERS = {
    "hessian": 0,
    "_version": 0,
    "_criteria": 0,
    "_attrs": 0,
    "_listeners": 0,
    "_roles": 1,
    "_placement": 1,
    "_start": 1,
    "_state": 2,
    "_lease": 3,
    "_waiting": 3,
    "_budget": 3,
    "_asynchronous": 3,
    "_starter": 3,
    "_sampler": 4,
    "_pruner": 4,
    "_report": 5,
    "_recovery": 5,
    "_summary": 5,
    "integration": 6,
    "visualization": 6,
    "_dashboard": 7,
    "_progress": 7,
    "_cli": 7,
    "__init__": 8,
    "__main__": 9,
}


def _layer_of(module: str) -> int:
    """The layer of ``optuna_convexity.<module>`` (a subpackage's modules share its layer)."""
    top = module.split(".")[0]
    assert top in LAYERS, f"optuna_convexity.{top} has no layer: add it to LAYERS"
    return LAYERS[top]


def _imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (anywhere in it, relative to the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "optuna_convexity" and len(parts) > 1:
                found.add(".".join(parts[1:]))
    return found


def _modules() -> list[tuple[str, Path]]:
    return [
        (".".join(path.relative_to(PACKAGE).with_suffix("").parts), path)
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_run_down_the_layers(module: str, path: Path) -> None:
    layer = _layer_of(module)
    upward = sorted(m for m in _imports_of(path) if _layer_of(m) > layer)
    assert not upward, f"{module} (layer {layer}) imports higher layers: {upward}"


def test_the_pure_modules_import_nothing_of_the_package() -> None:
    for module in ("_criteria", "_attrs", "_listeners"):
        assert _imports_of(PACKAGE / f"{module}.py") == set(), module
    assert not any(
        m.split(".")[0] != "hessian"
        for name, path in _modules()
        if name.startswith("hessian")
        for m in _imports_of(path)
    )


def test_the_search_never_imports_the_dashboard() -> None:
    for module, path in _modules():
        if _layer_of(module) < LAYERS["_dashboard"]:
            assert not any(m.startswith("_dashboard") for m in _imports_of(path)), module


def test_no_module_is_much_over_450_lines() -> None:
    lengths = {
        module: len(path.read_text().splitlines())
        for module, path in _modules()
        if module != "hessian._estimators"  # being split separately
    }
    assert max(lengths.values()) <= 480, sorted(lengths.items(), key=lambda item: -item[1])[:3]


# -- the attribute names: defined in one module, documented as the contract -----------------


def _names() -> set[str]:
    return {
        value
        for name, value in vars(_attrs).items()
        if name.isupper() and isinstance(value, str) and value.startswith("convexity:")
    }


def _phases() -> set[str]:
    return {value for name, value in vars(_attrs).items() if name.startswith("PHASE_")}


def test_the_package_docstring_lists_every_attribute() -> None:
    doc = optuna_convexity.__doc__ or ""
    table = doc[doc.index("=====") :]
    assert set(re.findall(r"``(convexity:\w+)``", table)) == _names()
    phase_row = table[table.index(f"``{_attrs.PHASE}``") : table.index(f"``{_attrs.ROUND}``")]
    assert set(re.findall(r'``"(\w+)"``', phase_row)) == _phases()


def test_the_readme_lists_every_attribute() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `convexity:")]
    assert set(re.findall(r"`(convexity:\w+)`", "\n".join(rows))) == _names()
    (phase_row,) = [row for row in rows if row.startswith(f"| `{_attrs.PHASE}`")]
    assert set(re.findall(r'`"(\w+)"`', phase_row)) == _phases()


# -- docstring examples run -----------------------------------------------------------------


def _examples(obj: Any) -> list[str]:
    """The code blocks of a docstring."""
    doc = inspect.getdoc(obj) or ""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")
    return [textwrap.dedent(block) for block in blocks]


@pytest.fixture
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_sampler_example_runs(one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    (example,) = _examples(optuna_convexity.ConvexitySampler)
    namespace: dict[str, Any] = {}
    exec(compile(example, "<ConvexitySampler example>", "exec"), namespace)
    study = namespace["study"]
    assert len(study.trials) == 10
    assert sum(optuna_convexity.is_promoted(t) for t in study.trials) == 2
    assert study.best_trial.value > 0.5  # a promoted trial trained in full on digits
    assert "### Round 0" in capsys.readouterr().out


def test_the_pruner_example_runs() -> None:
    (example,) = _examples(optuna_convexity.ConvexityPruner)
    namespace: dict[str, Any] = {}
    exec(compile(example, "<ConvexityPruner example>", "exec"), namespace)
    pruner = namespace["study"].pruner
    assert isinstance(pruner, optuna_convexity.ConvexityPruner)
    assert isinstance(pruner.pruner, namespace["optuna"].pruners.MedianPruner)
