"""What part of the search each trial plays, derived from the study's stored trials alone.

Every decision the sampler makes is a function of what the storage holds, so that any number
of threads, processes and restarts agree without talking to each other:

- A trial's *origin* is fixed when it is created: a **retry** carries Optuna's ``failed_trial``
  system attribute (``RetryHeartbeatStaleTrialCallback`` writes it), a trial **enqueued** with
  ``study.enqueue_trial`` carries ``fixed_params``, and every other trial is **fresh**.
- Fresh trials take the roles of a round in the order of their (unique, storage-assigned)
  numbers: with ``period = n_screening + n_promoted``, the fresh trial with index ``f`` plays
  round ``f // period``; it screens if ``f % period < n_screening`` and otherwise holds the
  promotion of rank ``f % period - n_screening + 1``. No two trials can hold the same rank,
  because no two trials have the same number.
- An enqueued trial is screened as an extra candidate of the round whose screening phase it
  falls in (or of the next round, if it falls in a promotion phase).
- A retry plays its original's role, so a retried promotion keeps its rank and parent.

A round's screening is *closed* once all its slots exist and none of its candidates can change
any more; its ranking is then final (and frozen in the study's system attributes the first
time a worker decides it, see :mod:`._state`). If a round has fewer valid
candidates than promotions, the trials holding the surplus ranks become extra screening
candidates of the next round instead: no full-budget trial runs without a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
import math
from typing import Any
from typing import Literal

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity._criteria import Criterion


Phase = Literal["screening", "promoted"]

#: Optuna's system attribute naming the original of a retried trial.
RETRY_OF = "failed_trial"
#: Optuna's system attribute holding the parameters of an enqueued trial.
FIXED_PARAMS = "fixed_params"


@dataclasses.dataclass(frozen=True)
class Role:
    """The part a trial plays in the search."""

    phase: Phase
    round: int
    #: Screening: position in the round (``None`` for enqueued extras). Promoted: ``None``.
    slot: int | None
    #: Promoted: 1 for the candidate the criterion ranks first. Screening: ``None``.
    rank: int | None
    #: The number of the trial that first held this role (a retry shares its original's).
    root: int


def is_queued_promotion(trial: FrozenTrial) -> bool:
    """A promotion enqueued by the asynchronous search (it carries its role from creation)."""
    return (
        FIXED_PARAMS in trial.system_attrs
        and RETRY_OF not in trial.system_attrs
        and trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
    )


def assign_roles(
    trials: Sequence[FrozenTrial],
    n_screening: int,
    n_promoted: int,
    asynchronous: bool = False,
) -> dict[int, Role]:
    """Roles of all trials, keyed by trial number.

    In the asynchronous search every fresh trial screens (rounds are groups of
    ``n_screening`` fresh trials), and promotions are trials enqueued with their role.
    """
    period = n_screening if asynchronous else n_screening + n_promoted
    roles: dict[int, Role] = {}
    fresh_count = 0
    last_fresh: Role | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if is_foreign(trial):
            continue
        origin = trial.system_attrs.get(RETRY_OF)
        if origin is not None:
            original = roles.get(origin)
            if original is not None:
                roles[trial.number] = original
            continue
        if is_queued_promotion(trial):
            roles[trial.number] = Role(
                "promoted",
                int(trial.user_attrs[_attrs.ROUND]),
                None,
                int(trial.user_attrs[_attrs.RANK]),
                trial.number,
            )
            continue
        if FIXED_PARAMS in trial.system_attrs:
            if last_fresh is None:
                round_number = 0
            elif last_fresh.phase == "screening":
                round_number = last_fresh.round
            else:
                round_number = last_fresh.round + 1
            roles[trial.number] = Role("screening", round_number, None, None, trial.number)
            continue
        round_number, position = divmod(fresh_count, period)
        fresh_count += 1
        if position < n_screening:
            role = Role("screening", round_number, position, None, trial.number)
        else:
            role = Role("promoted", round_number, None, position - n_screening + 1, trial.number)
        roles[trial.number] = role
        last_fresh = role
    return roles


def cleared_inheritance(trial: FrozenTrial) -> dict[str, None]:
    """Optuna's retry copies the attempt's attributes; a screening retry must not keep the
    exclusion of the attempt it repeats (the attributes to clear). Its score stays until the
    retry records its own, but counts only once it does (``SCORED_BY``): a number cannot be
    cleared without writing a value that is not one, and ``MU`` holds numbers only."""
    if RETRY_OF not in trial.system_attrs or trial.user_attrs.get(_attrs.EXCLUDED) is None:
        return {}
    return {_attrs.EXCLUDED: None}


def is_foreign(trial: FrozenTrial) -> bool:
    """A finished trial that the sampler never started (run by another sampler, e.g. from
    ``optuna.load_study`` without the sampler, or added with ``add_trial``): every trial the
    sampler starts has a phase before it runs, or ends FAIL if it could not take one.
    Foreign trials hold no role: the search ignores them (a running trial without a phase is
    one being started, and counts)."""
    return (
        trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and _attrs.PHASE not in trial.user_attrs
        and RETRY_OF not in trial.system_attrs
    )


def foreign_trials(trials: Sequence[FrozenTrial]) -> list[int]:
    """The numbers of the foreign trials (see :func:`is_foreign`)."""
    return [t.number for t in trials if is_foreign(t)]


def exclusion_reason(trial: FrozenTrial, state: TrialState) -> str | None:
    """Why a screening trial that ends in ``state`` cannot be promoted (``None`` if it can):
    recorded in its ``convexity:excluded`` attribute when it ends."""
    scored = _attrs.is_scored(trial)
    if state == TrialState.FAIL:
        return "failed" + (" after scoring" if scored else " before scoring")
    if not scored:
        return "pruned before scoring" if state == TrialState.PRUNED else "no mu recorded"
    return _attrs.mu_problem(_attrs.recorded_mu(trial))


@dataclasses.dataclass
class Candidate:
    """One screened configuration: its first trial and any retries of it."""

    root: int
    attempts: list[FrozenTrial]

    @property
    def final(self) -> FrozenTrial:
        return self.attempts[-1]

    @property
    def running(self) -> bool:
        return any(not a.state.is_finished() for a in self.attempts)

    @property
    def mu(self) -> float | None:
        """The score of the final attempt, if that attempt computed one itself."""
        return _attrs.recorded_mu(self.final)

    @property
    def exclusion(self) -> str | None:
        """Why the candidate cannot be promoted, or ``None`` if it can."""
        final = self.final
        if not final.state.is_finished():
            return "still running"
        recorded = final.user_attrs.get(_attrs.EXCLUDED)
        if recorded is not None:
            return str(recorded)
        if final.state == TrialState.FAIL:
            return "failed (its worker stopped without reporting)"
        return _attrs.mu_problem(self.mu)


def candidates_of_round(
    trials: Sequence[FrozenTrial], roles: dict[int, Role], round_number: int
) -> list[Candidate]:
    """The screening candidates of a round, in order of their first trial."""
    by_root: dict[int, Candidate] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        role = roles.get(trial.number)
        if role is None or role.phase != "screening" or role.round != round_number:
            continue
        candidate = by_root.setdefault(role.root, Candidate(role.root, []))
        candidate.attempts.append(trial)
    return list(by_root.values())


def awaited(
    candidates: Sequence[Candidate],
    *,
    retries_expected: bool,
    retry_grace: datetime.timedelta,
    now: datetime.datetime,
) -> list[Candidate]:
    """Candidates whose outcome may still change.

    A candidate is awaited while an attempt is waiting or running, and, when the storage
    retries stale trials, for ``retry_grace`` after an attempt that died without reporting
    (Optuna marks it failed first and enqueues its retry right after).
    """
    pending = []
    for candidate in candidates:
        if candidate.running:
            pending.append(candidate)
            continue
        final = candidate.final
        died_silently = final.state == TrialState.FAIL and _attrs.EXCLUDED not in final.user_attrs
        if retries_expected and died_silently and final.datetime_complete is not None:
            if now - final.datetime_complete < retry_grace:
                pending.append(candidate)
    return pending


def signals(candidate: Candidate) -> _criteria.Signals:
    """What a valid candidate's screening recorded, as the criteria see it."""
    mu = candidate.mu
    assert mu is not None
    final = candidate.final
    return _criteria.Signals(
        candidate.root, mu, _attrs.reported_value(final), _attrs.train_loss(final)
    )


def ranking(
    candidates: Sequence[Candidate], criterion: Criterion = "mu", maximize: bool = False
) -> list[Candidate]:
    """Valid candidates in promotion order by ``criterion`` (see :mod:`._criteria`)."""
    valid = {c.root: c for c in candidates if c.exclusion is None}
    scored = [signals(c) for c in valid.values()]
    return [valid[r.root] for r in _criteria.rank(scored, criterion, maximize)]


@dataclasses.dataclass
class Resolution:
    """Roles and rankings as far as the stored trials decide them."""

    #: Final roles of all trials up to the first open round; structural roles beyond it.
    roles: dict[int, Role]
    #: The candidates of every round looked at, in trial order.
    candidates: dict[int, list[Candidate]]
    #: Rankings (valid candidates in promotion order) of the closed rounds.
    rankings: dict[int, list[Candidate]]
    #: The first round whose screening is not closed, and what it waits for.
    open_round: int | None
    pending: list[Candidate]


def resolve(
    trials: Sequence[FrozenTrial],
    n_screening: int,
    n_promoted: int,
    *,
    frozen: dict[int, list[int]],
    retries_expected: bool,
    retry_grace: datetime.timedelta,
    now: datetime.datetime,
    criterion: Criterion = "mu",
    maximize: bool = False,
) -> Resolution:
    """Close rounds in order, rank them and hand surplus promotion slots to the next round.

    ``frozen`` maps a round to a ranking decided before (trial numbers in promotion order); it
    wins over recomputation, so that a retry arriving after the decision cannot change it.
    """
    roles = assign_roles(trials, n_screening, n_promoted)
    period = n_screening + n_promoted
    fresh = _fresh_count(trials)
    last_round = max((r.round for r in roles.values()), default=-1)
    resolution = Resolution(roles, {}, {}, None, [])
    for round_number in range(last_round + 2):
        candidates = candidates_of_round(trials, roles, round_number)
        resolution.candidates[round_number] = candidates
        slots_exist = fresh >= round_number * period + n_screening
        pending = awaited(
            candidates, retries_expected=retries_expected, retry_grace=retry_grace, now=now
        )
        if not slots_exist or pending:
            resolution.open_round = round_number
            resolution.pending = pending
            break
        by_number = {c.final.number: c for c in candidates}
        if round_number in frozen and all(n in by_number for n in frozen[round_number]):
            ranked = [by_number[n] for n in frozen[round_number]]
        else:
            ranked = ranking(candidates, criterion, maximize)
        resolution.rankings[round_number] = ranked
        surplus = {
            role.root
            for role in roles.values()
            if role.phase == "promoted"
            and role.round == round_number
            and role.rank is not None
            and role.rank > len(ranked)
        }
        for number, role in list(roles.items()):
            if role.root in surplus:
                roles[number] = Role("screening", round_number + 1, None, None, role.root)
    return resolution


def _fresh_count(trials: Sequence[FrozenTrial]) -> int:
    return sum(
        1
        for t in trials
        if RETRY_OF not in t.system_attrs
        and FIXED_PARAMS not in t.system_attrs
        and not is_foreign(t)
    )


def premise_check(
    trials: Sequence[FrozenTrial],
    round_number: int,
    criterion: str,
    maximize: bool,
    finishing: tuple[FrozenTrial, TrialState, Sequence[float] | None] | None = None,
) -> _criteria.PremiseCheck | None:
    """How the screening signals ranked the results of a round's completed promotions.

    ``finishing`` is a promoted trial being told right now (not stored as finished yet), with
    its final state and values. ``None`` if no promotion of the round has completed.
    """
    by_number = {t.number: t for t in trials}
    results: dict[int, tuple[int, float]] = {}  # rank -> (parent, full-budget value)
    for trial in trials:
        state, values = trial.state, trial.values
        if finishing is not None and trial.number == finishing[0].number:
            state, values = finishing[1], finishing[2]
        if (
            trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_PROMOTED
            or trial.user_attrs.get(_attrs.ROUND) != round_number
            or state != TrialState.COMPLETE
            or not values
            or not math.isfinite(values[0])
        ):
            continue
        results[int(trial.user_attrs[_attrs.RANK])] = (
            int(trial.user_attrs[_attrs.PARENT]),
            float(values[0]),
        )
    pairs = []
    for parent_number, value in results.values():
        parent = by_number.get(parent_number)
        mu = _attrs.recorded_mu(parent) if parent is not None else None
        if parent is None or mu is None or not math.isfinite(mu):
            continue
        signals = _criteria.Signals(
            parent.number, mu, _attrs.reported_value(parent), _attrs.train_loss(parent)
        )
        pairs.append((signals, value))
    if not pairs:
        return None
    return _criteria.premise_check(pairs, criterion, maximize)


def last_promotion_premise(
    trials: Sequence[FrozenTrial],
    finishing: tuple[FrozenTrial, TrialState, Sequence[float] | None],
    n_ranks: int,
    criterion: str,
    maximize: bool,
) -> _criteria.PremiseCheck | None:
    """The round's :func:`premise_check` if ``finishing`` is the last of its ``n_ranks``
    promotions to finish (every rank has a finished attempt and none is pending), else
    ``None``."""
    trial = finishing[0]
    round_number = trial.user_attrs[_attrs.ROUND]
    finished: set[Any] = {trial.user_attrs[_attrs.RANK]}
    pending: set[Any] = set()
    for t in trials:
        if (
            t.number == trial.number
            or t.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_PROMOTED
            or t.user_attrs.get(_attrs.ROUND) != round_number
        ):
            continue
        (finished if t.state.is_finished() else pending).add(t.user_attrs[_attrs.RANK])
    if pending or not set(range(1, n_ranks + 1)) <= finished:
        return None
    return premise_check(trials, int(round_number), criterion, maximize, finishing)
