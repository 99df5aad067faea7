"""The dashboard in a real browser: headless Chromium draws the figures and the note."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
import re
import shlex
import struct
import subprocess
import sys
from types import ModuleType

import optuna
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from tests.dashboard._search import STUDY_NAME
from tests.dashboard._search import synthetic_objective
from tests.dashboard._search import synthetic_study
from tests.dashboard._server import dashboard_server
from tests.dashboard._server import DashboardServer


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "dashboard_screenshot.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_screenshot", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


screenshot_script = _load_script()
CHROMIUM = screenshot_script.find_chromium()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]
pytest.importorskip("optuna_dashboard", reason="needs the dashboard extra")


def _dom(server: DashboardServer, path: str) -> str:
    """The page's DOM after Chromium ran its scripts for a virtual 10 seconds."""
    dom: str = screenshot_script.chromium(
        server.url + path, "--virtual-time-budget=10000", "--dump-dom", chromium_path=CHROMIUM
    )
    return dom


def _study_path(server: DashboardServer, study_name: str = STUDY_NAME) -> str:
    return f"/dashboard/studies/{screenshot_script.study_id(server.url, study_name)}"


def _assert_both_figures_drawn(dom: str) -> None:
    for figure_id, title in (
        ("convexity-screening", "Screening Plot"),
        ("convexity-mu-vs-value", "Mu vs Objective Value Plot"),
    ):
        start = dom.index(f'id="user-defined-plot:{figure_id}"')
        end = dom.find('id="user-defined-plot:', start + 1)
        drawn = dom[start : end if end > 0 else len(dom)]
        assert 'class="main-svg"' in drawn, f"{figure_id} was not drawn"
        assert title in drawn  # SVG text: plotly.js drew the figure's title


def test_study_page_draws_both_figures(server: DashboardServer) -> None:
    _assert_both_figures_drawn(_dom(server, _study_path(server)))


def test_note_page_renders_the_leaderboard(server: DashboardServer) -> None:
    dom = _dom(server, _study_path(server) + "/note")
    assert "Convexity search</h2>" in dom
    assert dom.count("<table>") == 4  # screening and promoted tables of two rounds
    assert "promoted rank" in dom and "COMPLETE" in dom


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_screenshot_script(searched: str, tmp_path: Path) -> None:
    output = tmp_path / "dashboard.png"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--storage",
            searched,
            "--study-name",
            STUDY_NAME,
            "--output",
            str(output),
            "--window-size",
            "1200,900",
            "--budget-ms",
            "8000",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert f"Saved {output}" in result.stdout
    assert _png_size(output) == (1200, 900)
    assert output.stat().st_size > 20_000  # a drawn page, not a blank one


def test_screenshot_script_names_the_missing_study(server: DashboardServer) -> None:
    with pytest.raises(
        SystemExit, match=r"No study named 'nope' in this storage \(studies: dashboard\)"
    ):
        screenshot_script.study_id(server.url, "nope")


def _diverging_objective(trial: optuna.Trial) -> float:
    """The synthetic search, but the first screening trial diverges: its mu is infinite."""
    if trial.number == 0 and optuna_convexity.is_screening(trial):
        trial.suggest_float("x", -1.0, 1.0)
        trial.suggest_int("y", 0, 9)
        optuna_convexity.record_mu(trial, math.inf)
        raise optuna.TrialPruned()
    return synthetic_objective(trial)


def test_trial_table_sorts_by_mu(tmp_path: Path) -> None:
    """optuna-dashboard sorts a column only if every value in it is a number: a diverged
    candidate must leave ``convexity:mu`` out rather than hold ``None`` or ``inf``."""
    pytest.importorskip("playwright", reason="sorting the table needs Playwright")
    storage = f"sqlite:///{tmp_path / 'sorting.db'}"
    study = synthetic_study(storage, n_screening=6, n_promoted=2, study_name="sorting")
    study.optimize(_diverging_objective, n_trials=8)
    with dashboard_server(storage) as running:
        (summary,) = running.get("/api/studies")["study_summaries"]
        served = running.get(f"/api/studies/{summary['study_id']}")
        sortable = {a["key"]: a["sortable"] for a in served["union_user_attrs"]}
        assert sortable[_attrs.MU] and sortable[_attrs.PROMOTED], sortable
        cells = screenshot_script.sorted_trial_table(
            running.url, summary["study_id"], _attrs.MU, chromium_path=CHROMIUM
        )
    mus = [t.user_attrs[_attrs.MU] for t in study.trials if _attrs.MU in t.user_attrs]
    assert len(mus) == 7  # five valid candidates, and the two promotions carry their parent's
    assert [float(c) for c in cells if c] == sorted(mus)
    # The diverged candidate has no mu: one empty cell, at an end (optuna-dashboard sorts a
    # missing value as the empty text, so before the numbers).
    assert cells.count("") == 1 and "" in (cells[0], cells[-1])


def _readme_command(marker: str) -> list[list[str]]:
    """The README's command after ``<!-- marker -->``, as its ``&&``-separated steps."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", text, re.DOTALL)
    assert match is not None, f"README.md has no command after <!-- {marker} -->"
    return [shlex.split(step) for step in match.group(1).split(" && ")]


def test_readme_extras_install_the_dashboard() -> None:
    """The README's first command installs the extras that draw the note and the figures."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (install,) = [step for step in _readme_command("example-command") if "-e" in step]
    assert install[:3] == ["pip", "install", "-e"]
    match = re.fullmatch(r"\.\[(.*)\]", install[3])
    assert match is not None, install
    installed = {
        re.split(r"[<>=!~;\[ ]", requirement)[0]
        for extra in match.group(1).split(",")
        for requirement in extras[extra]
    }
    assert {"optuna-dashboard", "plotly"} <= installed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_quickstart_gives_the_dashboard_page(tmp_path: Path) -> None:
    """Following the README in order: the quickstart search, then optuna-dashboard on its
    storage, shows both figures on the study's page and the leaderboard in its note."""
    *_, quickstart = _readme_command("example-command")
    assert quickstart == ["python", "examples/quickstart.py"]
    result = subprocess.run(
        [sys.executable, str(ROOT / quickstart[1])],
        cwd=tmp_path,  # a relative storage path, as in a fresh clone
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not installed" not in result.stderr, result.stderr[-3000:]
    ((command, storage),) = _readme_command("dashboard-command")
    assert command == "optuna-dashboard"
    with dashboard_server(storage, cwd=tmp_path) as running:
        study_path = _study_path(running, "quickstart")
        _assert_both_figures_drawn(_dom(running, study_path))
        note = _dom(running, study_path + "/note")
    assert "Convexity search</h2>" in note
    assert note.count("<table>") == 2  # the round's screening and promoted tables
    assert "promoted rank" in note and "COMPLETE" in note
