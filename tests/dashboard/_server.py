"""The real ``optuna-dashboard`` command on a free loopback port, started and stopped here."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import json
from pathlib import Path
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
import urllib.error
import urllib.request


HOST = "127.0.0.1"
#: Seconds for the server to answer its first request.
START_TIMEOUT = 30.0


def dashboard_command() -> str:
    """The ``optuna-dashboard`` script of this interpreter's environment."""
    here = Path(sys.executable).parent
    found = shutil.which("optuna-dashboard", path=str(here)) or shutil.which("optuna-dashboard")
    if found is None:
        raise RuntimeError("The optuna-dashboard command is not installed.")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class DashboardServer:
    """A running ``optuna-dashboard STORAGE --host 127.0.0.1 --port PORT``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://{HOST}:{port}"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())


@contextlib.contextmanager
def dashboard_server(
    storage: str, attempts: int = 3, cwd: Path | None = None
) -> Iterator[DashboardServer]:
    """Start the server (in ``cwd``, where a relative SQLite path is found) and wait until it
    answers; stop it on exit.

    The port is free when chosen but could be taken before the server binds it: the server
    then exits, and another port is tried.
    """
    command = dashboard_command()
    with tempfile.TemporaryDirectory() as directory:
        for attempt in range(attempts):
            port = free_port()
            log = Path(directory) / f"server-{attempt}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [command, storage, "--host", HOST, "--port", str(port), "--server", "wsgiref"],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                )
            try:
                server = DashboardServer(process, port, log)
                if _wait_until_up(server):
                    yield server
                    return
            finally:
                _stop(process)
        raise RuntimeError(
            f"optuna-dashboard did not start in {attempts} attempts:\n{log.read_text()}"
        )


def _wait_until_up(server: DashboardServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False  # exited: most likely the port was taken meanwhile
        try:
            server.get("/api/meta", timeout=2.0)
            return True
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(
        f"optuna-dashboard did not answer in {START_TIMEOUT} s:\n{server.log.read_text()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
