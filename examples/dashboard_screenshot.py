"""Screenshot optuna-dashboard showing a convexity search, with headless Chromium.

Starts the ``optuna-dashboard`` command on a free loopback port, loads the study's page (or
its note, or its trial table) in headless Chromium, saves a PNG and stops the server. Needs the
``dashboard`` extra and Chromium (Debian: ``apt-get install chromium``); the trial table, which
is sorted by clicking a column's header, also needs Playwright (``pip install playwright``; it
drives the Chromium installed, nothing is downloaded).

    python examples/quickstart.py                 # the search, saved to quickstart.db
    python examples/dashboard_screenshot.py       # the study page, saved to dashboard.png
    python examples/dashboard_screenshot.py --page note --output note.png
    python examples/dashboard_screenshot.py --page trials --sort-by convexity:mu \
        --output trials.png
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
import contextlib
import json
import os
from pathlib import Path
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


HOST = "127.0.0.1"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium (or Chrome) on ``PATH``, if any."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def dashboard(storage: str, timeout: float = 30.0) -> Iterator[str]:
    """Run ``optuna-dashboard STORAGE`` on a free loopback port; yield its URL."""
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    command = command or shutil.which("optuna-dashboard")
    if command is None:
        raise SystemExit(
            "optuna-dashboard is not installed: pip install 'optuna-convexity[dashboard]'"
        )
    with tempfile.TemporaryFile() as log:
        for _ in range(3):  # the port may be taken between choosing and binding it
            port = _free_port()
            url = f"http://{HOST}:{port}"
            process = subprocess.Popen(
                [command, storage, "--host", HOST, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + timeout
                while process.poll() is None and time.monotonic() < deadline:
                    try:
                        _get(f"{url}/api/meta")
                    except (urllib.error.URLError, ConnectionError):
                        time.sleep(0.1)
                        continue
                    yield url
                    return
                if process.poll() is None:
                    raise SystemExit(f"optuna-dashboard did not answer within {timeout:.0f} s.")
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        log.seek(0)
        raise SystemExit(f"optuna-dashboard did not start:\n{log.read().decode()}")


def study_id(url: str, study_name: str) -> int:
    """The dashboard's id of the study named ``study_name``."""
    studies = _get(f"{url}/api/studies")["study_summaries"]  # type: ignore[index]
    for study in studies:
        if study["study_name"] == study_name:
            return int(study["study_id"])
    names = ", ".join(s["study_name"] for s in studies) or "none"
    raise SystemExit(f"No study named {study_name!r} in this storage (studies: {names}).")


def chromium(url: str, *args: str, chromium_path: str, timeout: float = 120.0) -> str:
    """Run headless Chromium on ``url`` in a new profile; return what it printed."""
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        result = subprocess.run(
            [chromium_path, *flags, *args, url],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        raise SystemExit(f"Chromium failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def screenshot(
    storage: str,
    study_name: str,
    output: Path,
    *,
    page: str = "study",
    window_size: str = "1400,1720",
    budget_ms: int = 15000,
    chromium_path: str | None = None,
) -> Path:
    """Save a screenshot of the study's page (``page="study"``) or note (``"note"``)."""
    chromium_path = chromium_path or find_chromium()
    if chromium_path is None:
        raise SystemExit("Chromium is not installed (Debian: apt-get install chromium).")
    output = output.resolve()
    output.unlink(missing_ok=True)
    with dashboard(storage) as url:
        path = f"/dashboard/studies/{study_id(url, study_name)}"
        if page == "note":
            path += "/note"
        chromium(
            url + path,
            f"--window-size={window_size}",
            # Virtual time runs the page's scripts and data requests without waiting for real
            # time: the figures are drawn when it is used up.
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={output}",
            chromium_path=chromium_path,
        )
    if not output.is_file() or output.stat().st_size == 0:
        raise SystemExit(f"Chromium did not write {output}.")
    return output


def sorted_trial_table(
    url: str,
    study: int,
    column: str,
    *,
    chromium_path: str,
    output: Path | None = None,
    window_size: str = "1400,900",
    timeout_ms: int = 60000,
) -> list[str]:
    """Sort the trial table by a user attribute; return the column's cells, top to bottom.

    The table (optuna-dashboard's "Smart Selection" page) sorts a column when its header is
    clicked, which optuna-dashboard offers only when every value of the attribute is a number.
    With ``output``, the table is saved as a PNG, scrolled so that the column shows.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit(
            "Sorting the trial table needs Playwright: pip install playwright"
        ) from None
    width, height = (int(v) for v in window_size.split(","))
    args = ["--disable-gpu", "--disable-quic", "--hide-scrollbars"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(f"{url}/dashboard/studies/{study}/smartSelection")
            # The header's name ends with "sorted ascending" (hidden text) if it can sort.
            name = re.compile(rf"^UserAttribute {re.escape(column)}(\s|$)")
            header = page.get_by_role("columnheader", name=name)
            header.wait_for()
            sort = header.get_by_role("button")
            if sort.count() == 0:
                raise SystemExit(
                    f"optuna-dashboard does not offer to sort by {column}: some trial holds a "
                    "value that is not a number."
                )
            # MUI marks the active sort label, and its direction, with classes. The first click
            # sorts descending if the first row has no value: click again then.
            ascending = header.locator(".Mui-active.MuiTableSortLabel-directionAsc")
            sort.click()
            header.locator(".Mui-active").wait_for()
            if ascending.count() == 0:
                sort.click()
            ascending.wait_for()
            index = header.evaluate("element => element.cellIndex") + 1
            cells = page.locator(f"table tbody tr td:nth-child({index})").all_inner_texts()
            if output is not None:  # the header just below the app bar, the column in sight
                header.evaluate(
                    "element => { element.scrollIntoView({block: 'start', inline: 'center'});"
                    " window.scrollBy(0, -80); }"
                )
                page.screenshot(path=str(output))
            return cells
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///quickstart.db")
    parser.add_argument("--study-name", default="quickstart")
    parser.add_argument("--output", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--page", choices=("study", "note", "trials"), default="study")
    parser.add_argument(
        "--sort-by", default="convexity:mu", help="--page trials: the attribute to sort by"
    )
    parser.add_argument("--window-size", default="1400,1720", help="width,height in pixels")
    parser.add_argument(
        "--budget-ms", type=int, default=15000, help="Chromium's virtual-time budget"
    )
    parser.add_argument("--chromium", default=None, help="the browser (default: on PATH)")
    args = parser.parse_args()
    if args.page == "trials":
        chromium_path = args.chromium or find_chromium()
        if chromium_path is None:
            raise SystemExit("Chromium is not installed (Debian: apt-get install chromium).")
        output = args.output.resolve()
        with dashboard(args.storage) as url:
            sorted_trial_table(
                url,
                study_id(url, args.study_name),
                args.sort_by,
                chromium_path=chromium_path,
                output=output,
                window_size=args.window_size,
            )
        print(f"Saved {output}")
        return
    saved = screenshot(
        args.storage,
        args.study_name,
        args.output,
        page=args.page,
        window_size=args.window_size,
        budget_ms=args.budget_ms,
        chromium_path=args.chromium,
    )
    print(f"Saved {saved}")


if __name__ == "__main__":
    main()
