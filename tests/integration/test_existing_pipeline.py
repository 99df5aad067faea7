"""The two-line port of an ordinary Optuna objective: the diff is small, and both files run."""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
import re
from types import ModuleType

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs


pytest.importorskip("sklearn", reason='scikit-learn is not installed: pip install -e ".[test]"')

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "examples/existing_pipeline_before.py"
AFTER = "examples/existing_pipeline.py"
#: The README section holding the diff, a ```diff block right after this marker.
README_MARKER = "<!-- existing-pipeline-diff -->"


def unified_diff() -> str:
    """``diff -u`` of the two files without timestamps: the text shown in the README."""
    before = (ROOT / BEFORE).read_text().splitlines(keepends=True)
    after = (ROOT / AFTER).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, fromfile=BEFORE, tofile=AFTER))


def _changed_lines() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number in the "before" file, text) of removed and (in "after") of added lines."""
    before = (ROOT / BEFORE).read_text().splitlines()
    after = (ROOT / AFTER).read_text().splitlines()
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            removed += [(i + 1, before[i]) for i in range(i1, i2)]
        if tag in ("replace", "insert"):
            added += [(j + 1, after[j]) for j in range(j1, j2)]
    return removed, added


def _spans(path: str) -> dict[str, range]:
    """Line ranges of the objective function and of the ``create_study(...)`` call."""
    tree = ast.parse((ROOT / path).read_text())
    spans: dict[str, range] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "objective":
            assert node.end_lineno is not None
            spans["objective"] = range(node.lineno, node.end_lineno + 1)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "create_study"
        ):
            assert node.end_lineno is not None
            spans["create_study"] = range(node.lineno, node.end_lineno + 1)
    assert set(spans) == {"objective", "create_study"}, f"{path} lost its objective or study"
    return spans


def test_the_port_changes_one_import_at_most_three_objective_lines_and_create_study() -> None:
    removed, added = _changed_lines()
    before, after = _spans(BEFORE), _spans(AFTER)
    in_objective = [line for number, line in removed if number in before["objective"]] + [
        line for number, line in added if number in after["objective"]
    ]
    assert 1 <= len(in_objective) <= 3, in_objective
    assert all("optuna_convexity." in line for line in in_objective)

    outside = [
        line
        for number, line in removed
        if number not in before["objective"] and number not in before["create_study"]
    ] + [
        line
        for number, line in added
        if number not in after["objective"] and number not in after["create_study"]
    ]
    # Outside the objective and the create_study arguments: the import (and its blank line).
    assert [line for line in outside if line.strip()] == ["import optuna_convexity"]
    study_lines = [line for number, line in added if number in after["create_study"]]
    assert any("ConvexitySampler(" in line for line in study_lines)
    assert any("ConvexityPruner(" in line for line in study_lines)


def test_the_readme_shows_the_real_diff() -> None:
    readme = (ROOT / "README.md").read_text()
    if README_MARKER not in readme:
        pytest.skip(f"README.md has no {README_MARKER} section yet")
    match = re.search(re.escape(README_MARKER) + r"\s*```diff\n(.*?)```", readme, re.DOTALL)
    assert match is not None, f"no ```diff block after {README_MARKER} in README.md"
    assert match.group(1) == unified_diff(), (
        "README.md's diff is out of date; regenerate it with "
        "tests.integration.test_existing_pipeline.unified_diff()"
    )


def _load(path: str, epochs: int) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.EPOCHS = epochs
    return module


def test_the_ported_objective_runs_the_convexity_search() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    module = _load(AFTER, epochs=2)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(n_screening=3, n_promoted=1, seed=0),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(module.objective, n_trials=4)
    screening = [t for t in study.trials if optuna_convexity.is_screening(t)]
    promoted = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    assert len(screening) == 3 and len(promoted) == 1
    for trial in screening:
        assert trial.state == TrialState.PRUNED
        assert list(trial.intermediate_values) == [0]
        assert trial.user_attrs[_attrs.SCORED_BY] == trial.number
        assert trial.user_attrs[_attrs.MU] > 0
    assert promoted[0].state == TrialState.COMPLETE
    assert list(promoted[0].intermediate_values) == [0, 1]


def test_the_original_objective_still_runs_unchanged() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    module = _load(BEFORE, epochs=1)
    study = optuna.create_study(direction="maximize")
    study.optimize(module.objective, n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert 0.0 <= study.best_value <= 1.0
