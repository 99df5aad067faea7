"""The ``optuna-convexity`` command: a stored search's leaderboard and summary.

The storage options follow Optuna's own command line (``optuna trials --storage URL``):
``--storage`` takes an RDB URL, a Journal file path or a Redis URL, ``OPTUNA_STORAGE`` is read
when it is not given, and ``--storage-class`` names the storage when the URL cannot tell;
Optuna's own resolver opens it. A URL is never printed with its password.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import enum
import json
import math
import os
from pathlib import Path
import re
import sys
from typing import Any
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning

from optuna_convexity import _attrs
from optuna_convexity._summary import leaderboard
from optuna_convexity._summary import RoundSummary
from optuna_convexity._summary import summarize
from optuna_convexity._version import __version__


class CommandError(Exception):
    """A mistake the user can fix; the message says how."""


_USERINFO = re.compile(r"(//[^/@:]*:)([^/@]*)@")


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", url)


def _scrubbed(text: str, url: str) -> str:
    """``text`` with the URL, and its password wherever it appears, masked."""
    text = text.replace(url, masked(url))
    for match in _USERINFO.finditer(url):
        if match.group(2):
            text = text.replace(match.group(2), "***")
    return masked(text)


def _storage_url(given: str | None) -> str:
    if given is not None:
        return given
    url = os.environ.get("OPTUNA_STORAGE")
    if url is None:
        raise CommandError(
            "No storage given: pass --storage URL (e.g. sqlite:///example.db) or set the "
            "OPTUNA_STORAGE environment variable."
        )
    return url


def _load_study(args: argparse.Namespace) -> optuna.Study:
    from optuna import cli as optuna_cli
    from optuna.exceptions import CLIUsageError

    url = _storage_url(args.storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        # SQLAlchemy would create an empty database rather than say it is missing.
        raise CommandError(f"No such SQLite database: {masked(url)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = optuna_cli._get_storage(url, args.storage_class)
    except CLIUsageError as error:
        raise CommandError(f"Cannot open the storage {masked(url)}: {error}.") from None
    except Exception as error:  # a driver's message may quote the URL
        raise CommandError(
            f"Cannot open the storage {masked(url)}: {_scrubbed(str(error), url)}"
        ) from None
    names = [s.study_name for s in storage.get_all_studies()]
    if args.study_name is None:
        if len(names) != 1:
            raise CommandError(
                f"Pass --study-name: the storage {masked(url)} holds "
                + (f"{len(names)} studies ({', '.join(names)})." if names else "no study.")
            )
        args.study_name = names[0]
    if args.study_name not in names:
        raise CommandError(
            f"No study named {args.study_name!r} in the storage {masked(url)} "
            f"(studies: {', '.join(names) or 'none'})."
        )
    study = optuna.load_study(study_name=args.study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    if not any(_attrs.PHASE in t.user_attrs for t in trials):
        raise CommandError(
            f"Study {args.study_name!r} is not a convexity search: none of its {len(trials)} "
            "trials was run by optuna_convexity.ConvexitySampler."
        )
    return study


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return value


def summary_record(study: optuna.Study, summaries: Sequence[RoundSummary]) -> dict[str, Any]:
    """What ``summary --json`` prints: the study, its rounds (:func:`summarize`), its best."""
    best = None
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": trial.params}
    record: dict[str, Any] = _jsonable(
        {
            "study_name": study.study_name,
            "direction": study.direction.name,
            "metric_names": study.metric_names,
            "rounds": [dataclasses.asdict(s) for s in summaries],
            "best_trial": best,
        }
    )
    return record


def _summary_text(study: optuna.Study, summaries: Sequence[RoundSummary]) -> str:
    names = study.metric_names
    metric = names[0] if names else "value"
    lines = [f"Study {study.study_name!r} ({study.direction.name.lower()})"]
    for s in summaries:
        valid = sum(1 for c in s.candidates if c.screening_rank is not None)
        done = [p for p in s.promotions if p.value is not None]
        best = ""
        if done:
            sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
            top = max(done, key=lambda p: sign * float(p.value))  # type: ignore[arg-type]
            best = f"; best promoted: trial {top.number}, {metric} {top.value:.6g}"
        lines.append(
            f"round {s.round}: {len(s.candidates)} screened "
            f"({'done' if s.screening_done else 'in progress'}, {valid} valid), "
            f"{len(s.promotions)} promoted{best}"
        )
    return "\n".join(lines)


def _leaderboard(args: argparse.Namespace) -> int:
    study = _load_study(args)
    print(leaderboard(study, top=args.top), end="")
    return 0


def _summary(args: argparse.Namespace) -> int:
    study = _load_study(args)
    summaries = summarize(study)
    if args.json:
        print(json.dumps(summary_record(study, summaries), indent=2, allow_nan=False))
    else:
        print(_summary_text(study, summaries))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-convexity",
        description="Report a stored convexity search (optuna_convexity.ConvexitySampler).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--storage",
            default=None,
            help="the study's storage, as for Optuna's CLI: an RDB URL (e.g. "
            "sqlite:///example.db), a Journal file or a Redis URL; also read from the "
            "OPTUNA_STORAGE environment variable",
        )
        sub.add_argument(
            "--storage-class",
            default=None,
            choices=("RDBStorage", "JournalFileBackend", "JournalRedisBackend"),
            help="the storage class, when the URL does not tell (e.g. JournalFileBackend "
            "for a Journal file that does not exist yet)",
        )
        sub.add_argument(
            "--study-name", default=None, help="the study (optional if the storage has one)"
        )
        return sub

    board = command(
        "leaderboard", "Print the leaderboard of optuna_convexity.leaderboard() (Markdown)."
    )
    board.add_argument(
        "--top",
        type=int,
        default=None,
        help="screening rows per round (default: the promoted candidates plus five)",
    )
    board.set_defaults(handler=_leaderboard)
    summary = command("summary", "Print the rounds of optuna_convexity.summarize().")
    summary.add_argument("--json", action="store_true", help="print them as JSON")
    summary.set_defaults(handler=_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``optuna-convexity`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        status: int = args.handler(args)
    except CommandError as error:
        print(f"optuna-convexity: error: {error}", file=sys.stderr)
        return 1
    return status
