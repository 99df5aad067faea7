"""The workers benchmark runs the distributed example as a user would, and prints its table.

No thresholds on throughput: the benchmark reports whatever it measures.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest


pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]


def _launcher() -> object:
    path = ROOT / "examples" / "distributed" / "launcher.py"
    spec = importlib.util.spec_from_file_location("launcher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_divides_the_usable_cores_among_its_workers() -> None:
    threads_per_worker = _launcher().threads_per_worker  # type: ignore[attr-defined]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads_per_worker(1) == cores
    assert threads_per_worker(2 * cores) == 1  # never zero
    assert threads_per_worker(2) == max(1, cores // 2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_mode_prints_a_row_per_configuration_with_the_load() -> None:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "workers_throughput.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout
    assert re.search(r"^load average \(1, 5, 15 min\) before: [\d.]+, ", output, re.MULTILINE)
    assert re.search(r"^load average \(1, 5, 15 min\) after: [\d.]+, ", output, re.MULTILINE)
    rows = re.findall(
        r"^\| (\d+) \| (\d+) \((shared|all cores)\) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|$",
        output,
        re.MULTILINE,
    )
    assert {int(row[0]) for row in rows} == {1, 2}
    shared = _launcher().threads_per_worker(2)  # type: ignore[attr-defined]
    assert ("2", str(shared), "shared") in {row[:3] for row in rows}
    for *_, median, low, high in rows:
        assert 0 < float(low) <= float(median) <= float(high)
