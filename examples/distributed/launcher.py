"""Start several workers of a distributed convexity search on this machine and wait for them.

    python examples/distributed/launcher.py --workers 4
    python examples/distributed/launcher.py --workers 8 \
        --storage postgresql+psycopg2://user:password@127.0.0.1/optuna

Any extra arguments are passed to every worker (see worker.py). When they are done, the
launcher prints the leaderboard. Ctrl-C stops every worker; running the launcher again
continues the study.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import subprocess
import sys

import optuna

import optuna_convexity


sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import make_storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--storage", default="journal:distributed-search.log")
    parser.add_argument("--study-name", default="distributed")
    args, passed_on = parser.parse_known_args()

    worker = Path(__file__).resolve().parent / "worker.py"
    command = [
        sys.executable,
        str(worker),
        "--storage",
        args.storage,
        "--study-name",
        args.study_name,
        *passed_on,
    ]
    # Each worker shows its progress on its own line of this terminal.
    processes = [
        subprocess.Popen([*command, "--progress-line", str(index)])
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
