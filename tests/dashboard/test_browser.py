"""The dashboard in a real browser: headless Chromium draws the figures and the note."""

from __future__ import annotations

import importlib.util
from pathlib import Path
import struct
import subprocess
import sys
from types import ModuleType

import pytest

from tests.dashboard._search import STUDY_NAME
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


def _study_path(server: DashboardServer) -> str:
    return f"/dashboard/studies/{screenshot_script.study_id(server.url, STUDY_NAME)}"


def test_study_page_draws_both_figures(server: DashboardServer) -> None:
    dom = _dom(server, _study_path(server))
    for figure_id, title in (
        ("convexity-screening", "Screening Plot"),
        ("convexity-mu-vs-value", "Mu vs Objective Value Plot"),
    ):
        start = dom.index(f'id="user-defined-plot:{figure_id}"')
        drawn = dom[start : start + 20000]
        assert 'class="main-svg"' in drawn, f"{figure_id} was not drawn"
        assert title in drawn  # SVG text: plotly.js drew the figure's title


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
