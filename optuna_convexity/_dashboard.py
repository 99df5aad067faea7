"""Keep optuna-dashboard's view of a convexity search up to date (the ``dashboard`` extra).

The package root subscribes :func:`refresh` as a listener of the search (see
:mod:`optuna_convexity._listeners`), so every worker calls it when it decides a promotion and
when a promoted trial ends; the search itself never imports this module.
It keeps a section of the study note (the leaderboard of :func:`optuna_convexity.leaderboard`,
under :data:`NOTE_HEADING`; anything written above that heading is kept), a note on each
promoted trial (what it reruns, its parent's ``mu`` and one-epoch value, and why it was
promoted: its rank, its tier and the criterion's rule) and two figures,
:func:`~optuna_convexity.visualization.plot_screening` and
:func:`~optuna_convexity.visualization.plot_mu_vs_value`.

How optuna-dashboard stores them, and why concurrent workers cannot leave them wrong:

- A note is a version number (``dashboard:note_ver``) and the text cut into chunks of 2045
  characters (``dashboard:note_str:0``, ``...:1``, ...); a figure is its plotly JSON cut the
  same way (``dashboard:plot_data:<id>:0``, ...). All are study system attributes, written
  one at a time by ``save_note`` and ``save_plotly_graph_object``; chunks left over from a
  longer text are blanked, never deleted. No storage writes several attributes atomically, so
  two workers writing at once can interleave their chunks into text that neither wrote (for a
  figure, JSON that does not parse).
- So the content is a pure function of what the storage holds: every worker that builds it
  from the same trials builds the same characters, and interleaving identical chunks is
  harmless. No clock, host or worker enters the content.
- A trial being told right now is not in the storage yet (``after_trial`` runs before Optuna
  stores the result). Its state and values are first published in a study system attribute
  (``convexity:dashboard:finishing:<number>``), which every worker reads as the trial's result
  until the storage has it, so that a concurrent worker does not build an older content.
- Each refresh reads the trials and the system attributes, builds the content, and compares
  it with what the dashboard would show (optuna-dashboard's own readers). It writes only what
  differs, then reads and compares again, at most :data:`_MAX_WRITES` times: it returns once
  the stored content equals the content built from the storage as it is then, so whichever
  worker writes last also checks last, and a torn or outdated write is repaired.
- Threads of one process take turns (a lock); processes rely on the above.

The cost is bounded: a refresh whose content is unchanged reads the storage twice and writes
nothing; a changed one adds one write per chunk and one more read.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Container
from collections.abc import Sequence
import copy
import dataclasses
import logging
import math
import re
import threading
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity import _state
from optuna_convexity._listeners import Finishing
from optuna_convexity._summary import leaderboard
from optuna_convexity._summary import markdown_text
from optuna_convexity._summary import RoundSummary
from optuna_convexity._summary import summarize


_logger = logging.getLogger(__name__)

#: The heading of the study note's section that the search rewrites; text above it is kept.
NOTE_HEADING = "## Convexity search"
NOTE_INTRO = (
    "*Kept up to date by optuna-convexity when promotions are decided and when a promoted "
    "trial ends; the Screening Plot and the Mu vs Objective Value Plot are on the study's main "
    "page. Write your own notes above this heading: they are kept.*"
)
#: optuna-dashboard ``graph_object_id`` of the figures (saving under an id replaces it).
SCREENING_FIGURE_ID = "convexity-screening"
MU_VS_VALUE_FIGURE_ID = "convexity-mu-vs-value"
#: Study system attribute publishing the result of a trial being told: ``<prefix><number>``.
FINISHING_KEY = "convexity:dashboard:finishing:"
#: Rounds of writing before a refresh leaves the rest to the next one.
_MAX_WRITES = 3

_NOTE_KEY = "note"
#: The key of a promoted trial's note among what the dashboard shows: ``<prefix><trial id>``.
_TRIAL_NOTE_KEY = "trial-note:"
#: optuna-dashboard's system attribute holding the version of a trial's note.
_TRIAL_NOTE_VERSION = re.compile(r"dashboard:(\d+):note_ver")
_lock = threading.Lock()
_INSTALL_HINT = (
    "Install the dashboard extra (pip install 'optuna-convexity[dashboard]'): the next "
    "promotion that a search on this storage decides or finishes then draws them for the "
    "whole study."
)
#: The notices this process has given (each is logged once per process).
_given: set[str] = set()


def _warn_once(message: str) -> None:
    with _lock:
        if message in _given:
            return
        _given.add(message)
    _logger.warning(message)


def refresh(study: optuna.Study, finishing: Finishing | None = None) -> None:
    """Rewrite the study's dashboard note and figures from the study's current state.

    ``finishing`` is a trial whose result is being told right now (the sampler's
    ``after_trial`` runs before Optuna stores it), with its final state and values.
    """
    try:
        import optuna_dashboard
    except ImportError:  # the ``dashboard`` extra is not installed
        _warn_once(
            "optuna-dashboard is not installed: this search draws no dashboard note or figures. "
            f"{_INSTALL_HINT}"
        )
        return
    from optuna_convexity.visualization import _plotly_imports

    if not _plotly_imports.is_available():
        _warn_once(
            "plotly is not installed: the dashboard note is kept up to date, but no figures "
            f"are drawn ({_plotly_imports._import_error}). {_INSTALL_HINT}"
        )
    readers = _dashboard_readers()
    with _lock:
        if finishing is not None:
            _publish(study, finishing)
        for attempt in range(_MAX_WRITES + 1):
            view, system_attrs = _snapshot(study)
            if readers is not None:
                stored = readers(system_attrs)
            else:
                stored = {_NOTE_KEY: optuna_dashboard.get_note(study)}
            wanted = _build(
                view,
                stored[_NOTE_KEY],
                figures=_plotly_imports.is_available(),
                trial_notes=readers is not None,
            )
            stale = {key: item for key, item in wanted.items() if stored.get(key) != item.text}
            if not stale:
                return
            if attempt == _MAX_WRITES:
                break
            for key, item in stale.items():
                if key == _NOTE_KEY:
                    optuna_dashboard.save_note(study, item.text)
                elif key.startswith(_TRIAL_NOTE_KEY):
                    _save_trial_note(study, int(key[len(_TRIAL_NOTE_KEY) :]), item.text)
                else:
                    optuna_dashboard.save_plotly_graph_object(
                        study, item.figure, graph_object_id=key
                    )
            if readers is None:  # cannot read back what was written: write once
                return
    _logger.debug(
        f"The dashboard of study {study.study_name!r} was still being changed by other workers "
        f"after {_MAX_WRITES} rewrites; the next refresh continues."
    )


def _save_trial_note(study: optuna.Study, trial_id: int, text: str) -> None:
    """``optuna_dashboard.save_note`` for a trial that may have finished (it takes a running
    ``optuna.Trial``; the note is stored in the study's system attributes either way)."""
    from optuna_dashboard._note import note_ver_key
    from optuna_dashboard._note import save_note_with_version

    storage, study_id = study._storage, study._study_id
    version = int(storage.get_study_system_attrs(study_id).get(note_ver_key(trial_id), 0))
    save_note_with_version(storage, study_id, trial_id, version + 1, text)


@dataclasses.dataclass(frozen=True)
class _Item:
    """Something the dashboard shows: its stored text, and the figure it is drawn from."""

    text: str
    figure: Any = None


def _build(
    view: optuna.Study, stored_note: str, figures: bool, trial_notes: bool
) -> dict[str, _Item]:
    items = {_NOTE_KEY: _Item(_note_body(stored_note, leaderboard(view)))}
    summaries = summarize(view)
    if trial_notes:
        items.update(_promotion_notes(view, summaries))
    if figures:  # the figures' code loads at the first refresh, not with the package
        from optuna_convexity.visualization._mu_vs_value import _get_mu_vs_value_info
        from optuna_convexity.visualization._mu_vs_value import _get_mu_vs_value_plot
        from optuna_convexity.visualization._screening import _get_screening_info
        from optuna_convexity.visualization._screening import _get_screening_plot

        names = view.metric_names
        target_name = names[0] if names else "Objective Value"
        for key, figure in (
            (SCREENING_FIGURE_ID, _get_screening_plot(_get_screening_info(view, summaries))),
            (
                MU_VS_VALUE_FIGURE_ID,
                _get_mu_vs_value_plot(_get_mu_vs_value_info(view, target_name, summaries)),
            ),
        ):
            items[key] = _Item(figure.to_json(), figure)
    return items


def _promotion_notes(view: optuna.Study, summaries: list[RoundSummary]) -> dict[str, _Item]:
    """A note on each promoted trial: what it reruns, its parent's signals, and why."""
    criterion = _state.config_of(view).criterion
    names = view.metric_names
    metric = markdown_text(names[0]) if names else "value"
    rounds = {s.round: s for s in summaries}
    notes = {}
    for trial in view.get_trials(deepcopy=False):
        if trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_PROMOTED:
            continue
        rank, parent = trial.user_attrs[_attrs.RANK], trial.user_attrs[_attrs.PARENT]
        summary = rounds.get(trial.user_attrs[_attrs.ROUND])
        candidates = summary.candidates if summary is not None else []
        candidate = next((c for c in candidates if c.number == parent), None)
        estimator = trial.user_attrs.get(_attrs.ESTIMATOR) or "estimator unknown"
        lines = [
            f"### Promoted: rank {rank} of round {trial.user_attrs[_attrs.ROUND]}",
            "",
            f"Reruns screening trial {parent} with its parameters at the full budget.",
            "",
            f"- mu of trial {parent}: {_shown(trial.user_attrs.get(_attrs.MU))} "
            f"({markdown_text(str(estimator))})",
        ]
        if candidate is not None:
            valid = sum(1 for c in candidates if c.screening_rank is not None)
            tier = f", in the {candidate.tier}" if candidate.tier else ""
            lines += [
                f"- one-epoch {metric} of trial {parent}: {_shown(candidate.value)}",
                f"- why: it ranks {candidate.screening_rank} of the round's {valid} valid "
                f'candidates{tier}, by `criterion="{criterion}"`: '
                f"{_criteria.describe(criterion)}.",
            ]
        notes[f"{_TRIAL_NOTE_KEY}{trial._trial_id}"] = _Item("\n".join(lines) + "\n")
    return notes


def _shown(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _note_body(stored: str, board: str) -> str:
    """The note: the user's text above :data:`NOTE_HEADING`, then the search's section."""
    start = _heading_start(stored)
    prefix = (stored if start is None else stored[:start]).rstrip()
    head = f"{prefix}\n\n" if prefix else ""
    return f"{head}{NOTE_HEADING}\n\n{NOTE_INTRO}\n\n{board}"


def _heading_start(note: str) -> int | None:
    if note.startswith(NOTE_HEADING + "\n"):
        return 0
    index = note.find("\n" + NOTE_HEADING + "\n")
    return None if index < 0 else index + 1


def _dashboard_readers() -> Callable[[dict[str, Any]], dict[str, str]] | None:
    """What the dashboard serves from a study's system attributes: the note and the figures
    (optuna-dashboard's own readers, so that the comparison is with what users see)."""
    try:
        from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
        from optuna_dashboard._note import get_note_from_system_attrs
    except ImportError:  # pragma: no cover - another optuna-dashboard layout
        _logger.debug("This optuna-dashboard cannot be read back: each refresh writes once.")
        return None

    def read(system_attrs: dict[str, Any]) -> dict[str, str]:
        stored: dict[str, str] = dict(get_plotly_graph_objects(system_attrs))
        stored[_NOTE_KEY] = str(get_note_from_system_attrs(system_attrs, None)["body"])
        for key in system_attrs:
            noted = _TRIAL_NOTE_VERSION.fullmatch(key)
            if noted is not None:
                note = get_note_from_system_attrs(system_attrs, int(noted.group(1)))
                stored[f"{_TRIAL_NOTE_KEY}{noted.group(1)}"] = str(note["body"])
        return stored

    return read


# -- a consistent view of the study -------------------------------------------------------


def _publish(study: optuna.Study, finishing: Finishing) -> None:
    trial, state, values = finishing
    study._storage.set_study_system_attr(
        study._study_id,
        f"{FINISHING_KEY}{trial.number}",
        {
            "state": state.name,
            "values": None if values is None else [float(v) for v in values],
        },
    )


def _snapshot(study: optuna.Study) -> tuple[optuna.Study, dict[str, Any]]:
    """The study as its storage holds it now, read once, with the published results of trials
    being told; and the study's system attributes read at the same time."""
    storage = study._storage
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    system_attrs = storage.get_study_system_attrs(study._study_id)
    shown = []
    for trial in trials:
        result = system_attrs.get(f"{FINISHING_KEY}{trial.number}")
        if not trial.state.is_finished() and isinstance(result, dict):
            trial = copy.copy(trial)
            trial.state = TrialState[result["state"]]
            trial.values = result["values"]
        shown.append(trial)
    snapshot = _SnapshotStorage(study, shown, system_attrs)
    view = optuna.Study(study.study_name, snapshot, sampler=study.sampler, pruner=study.pruner)
    return view, system_attrs


class _SnapshotStorage(BaseStorage):
    """A read-only storage holding one study as read at one moment (what the note and the
    figures are built from, so that every part of them shows the same state)."""

    def __init__(
        self, study: optuna.Study, trials: list[FrozenTrial], system_attrs: dict[str, Any]
    ) -> None:
        self._backend = study._storage
        self._study_id = study._study_id
        self._study_name = study.study_name
        self._directions = list(study.directions)
        self._trials = trials
        self._system_attrs = system_attrs

    def _check(self, study_id: int) -> None:
        if study_id != self._study_id:
            raise KeyError(f"This snapshot holds study {self._study_id} only, not {study_id}.")

    def get_study_id_from_name(self, study_name: str) -> int:
        if study_name != self._study_name:
            raise KeyError(f"This snapshot holds study {self._study_name!r} only.")
        return self._study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        self._check(study_id)
        return self._study_name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        self._check(study_id)
        return list(self._directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        self._check(study_id)
        return dict(self._system_attrs)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._backend.get_all_studies()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        for trial in self._trials:
            if trial._trial_id == trial_id:
                return trial
        raise KeyError(f"No trial with id {trial_id} in this snapshot.")

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        self._check(study_id)
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _read_only(self) -> NotImplementedError:
        return NotImplementedError("The dashboard's snapshot of a study is read-only.")

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        raise self._read_only()

    def delete_study(self, study_id: int) -> None:
        raise self._read_only()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        raise self._read_only()

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        raise self._read_only()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        raise self._read_only()

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
    ) -> None:
        raise self._read_only()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        raise self._read_only()

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        raise self._read_only()

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise self._read_only()

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise self._read_only()
