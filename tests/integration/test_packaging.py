"""What PyPI receives: the license, a description that renders there, an sdist with the tests."""

from __future__ import annotations

from pathlib import Path
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest


ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.DOTALL)


def test_the_pypi_description_links_nothing_relative() -> None:
    """PyPI shows the description away from the repository: a relative link or image there
    is broken, so every target is an absolute https address."""
    text = (ROOT / PROJECT["readme"]).read_text()
    markdown = re.findall(r"\]\(([^)\s]+)", text)
    html = re.findall(r"""(?:src|href)=["']([^"']+)""", text)
    targets = markdown + html
    assert targets, "the description links its sources (Optuna, the paper)"
    for target in targets:
        assert target.startswith("https://"), target


def test_the_pypi_description_shows_the_readme_example() -> None:
    """Its example is the README's, character for character, so the two cannot drift."""
    description = _python_blocks((ROOT / PROJECT["readme"]).read_text())
    readme = _python_blocks((ROOT / "README.md").read_text())
    assert len(description) == 1
    assert description[0] in readme


def test_the_license_is_mit_everywhere() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def _source_tree(destination: Path) -> Path:
    """A copy of the project as a fresh checkout has it (no caches, builds or databases)."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "*.db", "*.log"
    )
    return Path(shutil.copytree(ROOT, destination / "source", ignore=ignored))


@pytest.mark.slow
def test_sdist_carries_tests_and_examples_and_both_carry_the_license(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")
    source = _source_tree(tmp_path)
    out = tmp_path / "dist"
    out.mkdir()
    names = []
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state
        built = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; from setuptools import build_meta; "
                f"print('built:', build_meta.{hook}(sys.argv[1]))",
                str(out),
            ],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert built.returncode == 0, built.stderr[-3000:]
        (line,) = [line for line in built.stdout.splitlines() if line.startswith("built: ")]
        names.append(line.split()[1])
    sdist_name, wheel_name = names
    with tarfile.open(out / sdist_name) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    tracked = {
        str(path.relative_to(source))
        for folder in ("tests", "examples", "benchmarks")
        for path in (source / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert tracked <= names, sorted(tracked - names)
    assert {"LICENSE", "README.md", "CHANGELOG.md", PROJECT["readme"]} <= names
    assert not [name for name in names if name.endswith((".pyc", ".db", ".log"))]
    with zipfile.ZipFile(out / wheel_name) as wheel:
        listed = wheel.namelist()
        (license_file,) = [name for name in listed if name.endswith(".dist-info/licenses/LICENSE")]
        assert wheel.read(license_file) == (ROOT / "LICENSE").read_bytes()
        assert not [name for name in listed if name.startswith(("tests/", "examples/"))]
        (metadata,) = [name for name in listed if name.endswith(".dist-info/METADATA")]
        text = wheel.read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert "Description-Content-Type: text/markdown" in text
