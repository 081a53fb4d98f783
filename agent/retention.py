"""Which backups stay and which may go: a pure plan, made before anything is deleted.

A series is one database's folder (`_globals` and `_grants` are series too). In each series a
backup is protected, strongest first, by:

1. a pin (`backup-agent pin`), a label whose keep has not run out (`backup --label`), or, with
   `skip_unchanged`, being the newest good backup a skip relies on: nothing deletes it;
2. the floor: the `keep_min` newest *good* backups; nothing deletes them;
3. the keep_* rules (GFS with restic's semantics: for each rule, walking from the newest backup,
   the newest backup of each hour/day/ISO week/month/year counts, up to N periods; rules are
   independent, one backup may count for several; periods are taken in the job's time zone):
   kept unless the disk budget needs their room;
4. nothing: no keep_* rule selects it ("expired"), it is older than `max_age` ("max_age"), or it
   is an incomplete file older than the newest good backup ("incomplete").

Everything not protected by 1 or 2 forms the budget queue, least protected and oldest first:
old incomplete files, expired and too-old backups, incomplete files newer than the newest good
one, then backups the keep_* rules hold. The budget takes the shortest prefix of the queue that
frees enough room, so a tighter budget only ever deletes more, and the rules are overridden only
for room that is actually needed. Only good backups (a valid manifest) count toward any rule.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from agent.budget import Budget, DiskFigures, shortfall
from agent.config import RetentionPolicy

# Why a backup goes
INCOMPLETE = "incomplete"
EXPIRED = "expired"
MAX_AGE = "max_age"
BUDGET = "budget"
# Why a backup stays (besides the keep_* rule names)
PINNED = "pinned"
LABELLED = "labelled"  # `backup --label`, until its keep runs out
RELIED_ON = "skip_unchanged"  # the newest good backup of a series whose job skips unchanged databases
KEEP_MIN = "keep_min"
NO_KEEP_RULES = "no_keep_rules"  # the policy sets no keep_* count: every good backup may stay
NEWER_THAN_GOOD = "newer_than_good"  # an incomplete file newer than the newest good backup
DEFERRED = "deferred"  # would expire, but the policy is not being applied to this series now

_TIER_OLD_INCOMPLETE = 0
_TIER_EXPIRED = 1
_TIER_NEW_INCOMPLETE = 2
_TIER_KEPT = 3
_POLICY_TIERS = (_TIER_OLD_INCOMPLETE, _TIER_EXPIRED)

_Local = datetime
_PERIODS: tuple[tuple[str, Callable[[_Local], Any] | None], ...] = (
    ("keep_last", None),
    ("keep_hourly", lambda moment: (moment.year, moment.month, moment.day, moment.hour)),
    ("keep_daily", lambda moment: (moment.year, moment.month, moment.day)),
    ("keep_weekly", lambda moment: moment.isocalendar()[:2]),
    ("keep_monthly", lambda moment: (moment.year, moment.month)),
    ("keep_yearly", lambda moment: moment.year),
)


@dataclass(frozen=True, slots=True)
class Backup:
    """One data file as the planner sees it."""

    key: str  # its path relative to the storage root (unique)
    created_at: datetime  # timezone-aware
    size_bytes: int  # what deleting it (data file and manifest) gives back
    good: bool  # a valid manifest: only good backups count toward any rule or the floor
    pinned: bool = False
    sequence: int = 0  # orders backups made within the same second
    keep_until: datetime | None = None  # a label's keep: protected like a pin until then
    file_bytes: int = 0  # the data file's length: the size list, status and prune show


@dataclass(frozen=True, slots=True)
class Series:
    name: str  # "<job>/<folder>"
    backups: tuple[Backup, ...]
    policy: RetentionPolicy
    timezone: str = "UTC"
    protect_newest: bool = False  # skip_unchanged: a skip may rely on the newest good backup


class Decision(NamedTuple):
    """What happens to one backup (a named tuple: plans for 100,000 backups are built in a blink)."""

    series: str
    backup: Backup
    delete: bool
    rules: tuple[str, ...]  # a deletion: the one rule that let it go; a keep: every reason it stays

    @property
    def rule(self) -> str:
        return ",".join(self.rules)


@dataclass(frozen=True, slots=True)
class Plan:
    decisions: tuple[Decision, ...]  # every backup, series by series, oldest first
    deletions: tuple[Decision, ...]  # what applying the plan deletes, in order
    queue: tuple[Decision, ...]  # all the budget may take, least protected first (just-in-time order)
    need_bytes: int  # room asked for (the next dump's predicted peak, or 0)
    shortfall_bytes: int  # bytes missing before any deletion
    freeable_bytes: int  # what deleting the whole queue would give back

    @property
    def fits(self) -> bool:
        """The need fits the budget once the deletions are done (False: refuse a dump)."""
        return self.freeable_bytes >= self.shortfall_bytes

    @property
    def expected_deletions(self) -> int:
        """How many queue entries the need is expected to take (the whole queue when it cannot fit)."""
        remaining = self.shortfall_bytes
        for index, decision in enumerate(self.queue):
            if remaining <= 0:
                return index
            remaining -= decision.backup.size_bytes
        return len(self.queue)

    @property
    def deleted_bytes(self) -> int:
        return sum(decision.backup.size_bytes for decision in self.deletions)


# One backup's classification: the first four fields are its place in the budget queue (tier, then
# oldest first; the key is unique, so tuples never compare further). A plain tuple: plans for
# 100,000 backups must take well under a second.
_Verdict = tuple[int, datetime, int, str, str, Backup, str, tuple[str, ...]]
_PROTECTED = -1  # the tier of a pin or a floor backup: never in the queue


def plan(
    series: Sequence[Series],
    figures: DiskFigures,
    budget: Budget,
    *,
    now: datetime,
    need_bytes: int = 0,
    policy_scope: Collection[str] | None = None,
) -> Plan:
    """Decide what goes so that `need_bytes` more fit the budget, and what the policy lets go.

    `policy_scope` names the series whose policy deletions (expired, max_age, incomplete) happen
    now; None means all, empty means none (a pre-flight, where only room is planned). Every
    series is a source of room for the budget.
    """
    scope = None if policy_scope is None else frozenset(policy_scope)
    verdicts: list[_Verdict] = []
    for one in series:
        verdicts.extend(_classify(one, now))
    queue = sorted(verdict for verdict in verdicts if verdict[0] != _PROTECTED)
    missing = shortfall(figures, budget, need_bytes)
    chosen: set[str] = set()
    remaining = missing
    for tier, _moment, _sequence, key, name, backup, _rule, _keep in queue:
        if tier in _POLICY_TIERS and (scope is None or name in scope):
            chosen.add(key)
            remaining -= backup.size_bytes
    for _tier, _moment, _sequence, key, _name, backup, _rule, _keep in queue:
        if remaining <= 0:
            break
        if key not in chosen:
            chosen.add(key)
            remaining -= backup.size_bytes
    queued = tuple(Decision(name, backup, True, (rule,)) for _t, _m, _s, _k, name, backup, rule, _keep in queue)
    by_key = {decision.backup.key: decision for decision in queued}
    return Plan(
        decisions=tuple(by_key[verdict[3]] if verdict[3] in chosen else _as_keep(verdict) for verdict in verdicts),
        deletions=tuple(decision for decision in queued if decision.backup.key in chosen),
        queue=queued,
        need_bytes=need_bytes,
        shortfall_bytes=missing,
        freeable_bytes=sum(verdict[5].size_bytes for verdict in queue),
    )


def _as_keep(verdict: _Verdict) -> Decision:
    tier, _moment, _sequence, _key, name, backup, _rule, keep = verdict
    if not keep:
        keep = (DEFERRED,) if tier in _POLICY_TIERS else (NO_KEEP_RULES,)
    return Decision(name, backup, False, keep)


def _classify(series: Series, now: datetime) -> list[_Verdict]:
    """Each backup of one series: its tier in the budget queue and its reasons to stay or go."""
    ordered = sorted(series.backups, key=lambda backup: (backup.created_at, backup.sequence, backup.key))
    good = [backup for backup in ordered if backup.good]
    policy = series.policy
    floor = {backup.key for backup in good[max(0, len(good) - policy.keep_min) :]}
    relied_on = good[-1].key if good and series.protect_newest else None
    selected = _selected_by_rules(good, policy, series.timezone)
    any_rule = any((getattr(policy, name) or 0) > 0 for name, _period in _PERIODS)
    newest_good = (good[-1].created_at, good[-1].sequence) if good else None
    oldest_allowed = now - policy.max_age if policy.max_age is not None else None
    name = series.name
    verdicts: list[_Verdict] = []
    for backup in ordered:
        moment, sequence, key = backup.created_at, backup.sequence, backup.key
        protections = _strong_protections(backup, now, in_floor=key in floor, relied_on=key == relied_on)
        if not backup.good:
            older = newest_good is not None and (moment, sequence) < newest_good
            if protections:
                verdicts.append((_PROTECTED, moment, sequence, key, name, backup, INCOMPLETE, protections))
            elif older:
                verdicts.append((_TIER_OLD_INCOMPLETE, moment, sequence, key, name, backup, INCOMPLETE, ()))
            else:
                keep = (NEWER_THAN_GOOD,)
                verdicts.append((_TIER_NEW_INCOMPLETE, moment, sequence, key, name, backup, INCOMPLETE, keep))
            continue
        rules = selected.get(key, ())
        if protections:
            verdicts.append((_PROTECTED, moment, sequence, key, name, backup, "", protections + rules))
        elif oldest_allowed is not None and moment < oldest_allowed:
            verdicts.append((_TIER_EXPIRED, moment, sequence, key, name, backup, MAX_AGE, ()))
        elif any_rule and not rules:
            verdicts.append((_TIER_EXPIRED, moment, sequence, key, name, backup, EXPIRED, ()))
        else:
            verdicts.append((_TIER_KEPT, moment, sequence, key, name, backup, BUDGET, rules or (NO_KEEP_RULES,)))
    return verdicts


def _strong_protections(backup: Backup, now: datetime, *, in_floor: bool, relied_on: bool) -> tuple[str, ...]:
    """The reasons nothing, not even the budget, may delete a backup (empty: none)."""
    labelled = backup.keep_until is not None and now < backup.keep_until
    return (
        ((PINNED,) if backup.pinned else ())
        + ((LABELLED,) if labelled else ())
        + ((RELIED_ON,) if relied_on else ())
        + ((KEEP_MIN,) if in_floor else ())
    )


def _selected_by_rules(good: list[Backup], policy: RetentionPolicy, timezone: str) -> dict[str, tuple[str, ...]]:
    """For each good backup, the keep_* rules that select it (restic semantics, newest first)."""
    active = [(name, period) for name, period in _PERIODS if (getattr(policy, name) or 0) > 0]
    if not active or not good:
        return {}
    zone = _zone(timezone)
    newest_first = good[::-1]
    local = (
        [backup.created_at.astimezone(zone) for backup in newest_first]
        if any(period is not None for _name, period in active)
        else []
    )
    chosen: dict[str, list[str]] = {}
    for name, period in active:
        remaining: int = getattr(policy, name)
        if period is None:
            for backup in newest_first[:remaining]:
                chosen.setdefault(backup.key, []).append(name)
            continue
        last: Any = None
        for backup, moment in zip(newest_first, local, strict=True):
            bucket = period(moment)
            if bucket == last:
                continue
            last = bucket
            chosen.setdefault(backup.key, []).append(name)
            remaining -= 1
            if remaining == 0:
                break
    return {key: tuple(names) for key, names in chosen.items()}


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
