"""The distributed example keeps the storage URL (a password, for a database) off every
process's command line: the launcher hands it to its workers in their environment."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
import time

import optuna
import pytest


ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "examples" / "distributed" / "launcher.py"


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # "pid (command) state ppid ...": the command may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return children


def _command_line(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux's /proc")
def test_no_worker_command_line_carries_the_storage(tmp_path: Path) -> None:
    # The storage's name carries a marker standing for a password: a Journal file needs no
    # server, and the marker must reach the workers (they use that file) but no command line.
    secret = "s3cret-7f2a9c"
    journal = tmp_path / f"{secret}.log"
    environment = {**os.environ, "OPTUNA_STORAGE": f"journal:{journal}"}
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(LAUNCHER),
            "--workers",
            "2",
            "--threads",
            "1",
            "--n-screening",
            "2",
            "--n-promoted",
            "1",
            "--epochs",
            "1",
        ],
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, str] = {}
    while launcher.poll() is None:
        for pid in _children(launcher.pid):
            line = _command_line(pid)
            if line:
                seen[pid] = line
        time.sleep(0.02)
    stdout, stderr = launcher.communicate()
    assert launcher.returncode == 0, stderr[-3000:]
    workers = {pid: line for pid, line in seen.items() if "worker.py" in line}
    assert len(workers) == 2, seen
    for line in workers.values():
        assert secret not in line and "--storage" not in line, line
    assert secret not in (_command_line(os.getpid()) or "")
    # ... and yet the workers ran the search on that storage.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name="distributed", storage=storage)
    assert len(study.trials) >= 3
    assert "Promotion order" in stdout


def test_a_password_on_the_command_line_is_warned_about() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import worker; "
            "worker.warn_if_password_on_command_line(sys.argv[2])",
            str(ROOT / "examples" / "distributed"),
            "postgresql+psycopg2://user:hunter2@db/optuna",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OPTUNA_STORAGE"},
    )
    assert "--storage carries a password" in result.stderr
    assert "OPTUNA_STORAGE" in result.stderr
