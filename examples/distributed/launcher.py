"""Start several workers of a distributed convexity search on this machine and wait for them.

    python examples/distributed/launcher.py --workers 4    # a Journal file

    # A database URL holds a password: give it in the environment, never on the command line
    # (every process can read a command line in /proc/PID/cmdline, and the shell's history
    # keeps it). `read -s` keeps it out of the history and off the screen too.
    read -rsp "Storage URL: " OPTUNA_STORAGE && export OPTUNA_STORAGE
    python examples/distributed/launcher.py --workers 8

The workers get the storage in their environment (``OPTUNA_STORAGE``, as Optuna's own command
line reads it), not on their command lines.

Each worker gets its share of this machine's cores as torch threads (``--threads``; one
process per core at most is what a small model wants: more threads than cores make every
worker slower). Any extra arguments are passed to every worker (see worker.py). When they are
done, the launcher prints the leaderboard. Ctrl-C stops every worker; running the launcher
again continues the study.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import subprocess
import sys

import optuna

import optuna_convexity


sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import DEFAULT_STORAGE
from worker import make_storage
from worker import warn_if_password_on_command_line


def threads_per_worker(workers: int) -> int:
    """This process's usable cores divided among ``workers`` (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--storage",
        default=os.environ.get("OPTUNA_STORAGE", DEFAULT_STORAGE),
        help=f"a Journal file (journal:<path>) or a database URL; default: $OPTUNA_STORAGE, "
        f"else {DEFAULT_STORAGE}. A URL with a password belongs in OPTUNA_STORAGE instead",
    )
    parser.add_argument("--study-name", default="distributed")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: the usable cores divided among the workers, "
        "at least 1)",
    )
    args, passed_on = parser.parse_known_args()
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--workers and --threads must be at least 1")
    threads = args.threads if args.threads is not None else threads_per_worker(args.workers)
    warn_if_password_on_command_line(args.storage)

    worker = Path(__file__).resolve().parent / "worker.py"
    command = [
        sys.executable,
        str(worker),
        "--study-name",
        args.study_name,
        "--threads",
        str(threads),
        *passed_on,
    ]
    # Each worker shows its progress on its own line of this terminal.
    # The storage (and its password) goes in the environment: a command line is public.
    environment = {**os.environ, "OPTUNA_STORAGE": args.storage}
    processes = [
        subprocess.Popen([*command, "--progress-line", str(index)], env=environment)
        for index in range(args.workers)
    ]
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; let them fail their trials
        codes = [process.wait() for process in processes]
        print("Stopped. Run the launcher again to continue the study.")
        if not args.storage.startswith(("postgresql", "mysql")):
            print(
                "This storage has no heartbeat: if a worker was killed rather than "
                "interrupted, run optuna_convexity.fail_running_trials(study) first."
            )
        raise SystemExit(130) from None
    study = optuna.load_study(study_name=args.study_name, storage=make_storage(args.storage))
    print(optuna_convexity.leaderboard(study))
    raise SystemExit(max(codes))


if __name__ == "__main__":
    main()
