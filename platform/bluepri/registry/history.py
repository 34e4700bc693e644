"""The registry's history: what each event file must hold, and the champion replayed from it.

    <root>/<name>/history/00000001.json   one event per file: put, promote, reject, rollback
    <root>/<name>/history.jsonl           the older layout's log: read first, never written

Event files are created once, under the next free sequence number (`atomic.create_file`;
on a collision the writer takes the next number) and never rewritten, so concurrent writers
lose no event; readers read them in sequence order. The champion is not stored: it is
replayed from the events (`champion_stack`). A line or file that does not parse, or that
is not an event, is skipped and reported as a `Problem`: one careless edit must not make a
whole adapter's history unreadable.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from bluepri.artifacts import SHA256_PATTERN, parse_json_object
from bluepri.errors import BluepriError
from bluepri.registry.ids import RESERVED_VERSIONS, is_valid_id

ACTIONS = ("put", "promote", "reject", "rollback")
EVENT_FILE = re.compile(r"(\d{8,})\.json")
SHA256 = re.compile(SHA256_PATTERN)


class RegistryWarning(UserWarning):
    """A broken entry was skipped; everything else was read."""


@dataclass(frozen=True)
class Problem:
    """Something a reader skipped: where it is (`name/version`, a history file or line) and
    the one-line error that says what is wrong with it."""

    where: str
    message: str

    def __str__(self) -> str:
        return self.message


def warn(problems: list[Problem]) -> None:
    for problem in problems:
        warnings.warn(str(problem), RegistryWarning, stacklevel=3)


@dataclass
class History:
    """The events of one adapter name, oldest first, and what was skipped reading them."""

    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def event_file(sequence: int) -> str:
    return f"{sequence:08d}.json"


def event_sequence(file_name: str) -> int | None:
    """12 for `00000012.json`; None for anything else in the folder (staging files, claims)."""
    match = EVENT_FILE.fullmatch(file_name)
    return int(match.group(1)) if match else None


def parse_event(data: bytes, where: str) -> dict[str, Any]:
    """One event from untrusted bytes, or a BluepriError saying (in one line) why not."""
    event = parse_json_object(data, where)
    why = event_defect(event)
    if why:
        raise BluepriError(f"{where} {why}")
    return event


def event_defect(event: dict[str, Any]) -> str | None:
    """What keeps a JSON object from being an event that replay and checks can trust."""
    action, version = event.get("action"), event.get("version")
    if action not in ACTIONS:
        return f"has no known action ({', '.join(ACTIONS)})"
    if not is_valid_id(version) or version in RESERVED_VERSIONS:
        return "names no valid version"
    if action == "put" and not SHA256.fullmatch(str(event.get("sha256"))):
        return "is a put without a sha256 hex digest"
    before = event.get("champion_before")
    if action == "rollback" and before is not None and not is_valid_id(before):
        return "is a rollback from no valid version"
    return None


def parse_legacy_log(data: bytes, where: str) -> History:
    """The older layout's `history.jsonl`: one event per line; a bad line is a problem."""
    history = History()
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        here = f"{where} line {number}"
        try:
            history.events.append(parse_event(line, here))
        except BluepriError as err:
            history.problems.append(Problem(here, str(err)))
    return history


def put_digests(events: list[dict[str, Any]]) -> dict[str, str]:
    """The sha256 each version's put recorded. A later put of a number wins: a number comes
    free again only when the put that held it failed and removed its version."""
    return {e["version"]: e["sha256"] for e in events if e["action"] == "put"}


def champion_stack(events: list[dict[str, Any]]) -> list[str]:
    """Champions in the order crowned, replayed: a promote pushes its version; a rollback
    withdraws the latest crowning of the champion it rolled back from (the top, when decided
    on the current state), so two rollbacks decided on the same champion undo it once, and
    a promote that landed between a rollback's decision and its event stays champion. The
    champion is the top. Events of the older layout without `champion_before` pop the top.
    """
    stack: list[str] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["version"])
        elif event["action"] == "rollback":
            withdraw(stack, event.get("champion_before"))
    return stack


def withdraw(stack: list[str], version: str | None) -> None:
    if version is None:
        if stack:
            stack.pop()
        return
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] == version:
            del stack[index]
            return
