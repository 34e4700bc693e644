"""The adapter registry: versioned, checksummed adapter artifacts and one champion per name.

    <root>/<name>/<version>/               an adapter artifact (weights, adapter.json, card, ...)
    <root>/<name>/history/<seq>.json       one immutable file per put, promote, reject, rollback
    <root>/<name>/history.jsonl            the older layout's log: read first, never written

The root is a local folder or a pyarrow filesystem URI (s3://, gs://, file://). Versions are
immutable once put. Weights are handed out (`get`, `load_state_dict`, `export`) only after
their sha256 matches adapter.json and the digest that the version's put event recorded.
Every path the registry touches is built from validated ids (`ids.py`) and checked to lie
inside the root, so nothing outside it is read or written.

Any number of writers and readers may share a registry (people, nightly jobs, serve
replicas, renders), on a local disk or an object store:

- Nothing is read, modified and written back. A put claims its version folder, and every
  event its sequence number, with an exclusive create (`atomic.py`: mkdir or a hard link on
  local disks, a claim protocol on object stores); a writer that loses takes the next number.
  So N concurrent puts get N versions, and no event is lost.
- The champion is not stored but replayed from the history (`history.py`): there is no
  pointer that concurrent writers could leave disagreeing with the history.
- A put writes its event before the version's adapter.json, and a version exists once its
  adapter.json does: every complete version has the put event its sha256 is checked
  against, and a version without one is refused, never loaded unchecked.
- `get` from a remote root hands out an immutable local copy (`cache.py`).

Readers skip a broken entry (an edited adapter.json, a bad history line) and report it
(`scan`, `RegistryWarning`) rather than fail for the whole registry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from bluepri import storage
from bluepri.artifacts import ADAPTER_JSON, VALIDATION_DIR, WEIGHTS_NAME, AdapterInfo
from bluepri.errors import BluepriError
from bluepri.registry import atomic, cache
from bluepri.registry.checks import (
    adapter_info,
    check_safetensors_header,
    checksum_mismatch,
    copy_hashed,
    refuse_pickles,
    sha256_of,
)
from bluepri.registry.history import (
    History,
    Problem,
    champion_stack,
    event_file,
    event_sequence,
    parse_event,
    parse_legacy_log,
    put_digests,
    warn,
)
from bluepri.registry.ids import (
    CHAMPION,
    HISTORY_DIR,
    LATEST,
    LEGACY_HISTORY,
    RESERVED_VERSIONS,
    check_name,
    check_relative_file,
    check_version,
    is_valid_id,
    version_number,
    version_sort_key,
)

# What `put` copies from an artifact folder: its top-level files plus these folders. Train's
# output_dir also holds `runs/` (Ray checkpoints, pickled optimizer state) and `cache/`;
# those are the run's, not the adapter's, and are neither read nor copied.
ARTIFACT_DIRS = (VALIDATION_DIR,)
DECISIONS = ("promote", "reject")
EXPORT_FORMATS = ("kohya", "diffusers")
DIRECTORY, FILE = pafs.FileType.Directory, pafs.FileType.File


@dataclass(frozen=True)
class AdapterRecord:
    """One stored version: where it lives, its weights' sha256 and its typed adapter.json."""

    name: str
    version: str
    uri: str
    sha256: str
    adapter: AdapterInfo = field(repr=False)

    @property
    def info(self) -> dict[str, Any]:
        """adapter.json as a plain JSON dict (what callers read before it was typed)."""
        return self.adapter.model_dump(mode="json")

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.adapter.metrics)


@dataclass(frozen=True)
class Decision:
    """A change (or refusal to change) of champion, as recorded in the history."""

    name: str
    action: str  # promote | reject | rollback
    version: str  # the candidate, or for a rollback the version restored
    champion_before: str | None
    champion_after: str | None
    reason: str
    metrics: dict[str, Any]
    at: str

    @property
    def promoted(self) -> bool:
        return self.action == "promote"


@dataclass
class Listing:
    """What `scan` found: the records it could read and the entries it skipped."""

    records: list[AdapterRecord]
    problems: list[Problem]


@dataclass(frozen=True)
class Stored:
    """A stored version's adapter.json, checked: typed, raw bytes, and the weights' sha256
    that both it and the version's put event promise."""

    adapter: AdapterInfo
    raw: bytes
    digest: str


@dataclass(frozen=True)
class SourceArtifact:
    """An artifact folder about to be put, read and checked once."""

    fs: pafs.FileSystem
    root: str
    files: list[str]
    raw: bytes
    adapter: AdapterInfo
    where: str

    @property
    def digest(self) -> str:
        return self.adapter.weights.sha256


def default_root() -> Path:
    """`$BLUEPRI_HOME/registry`: where the CLI looks when no --registry is given."""
    from bluepri.models.loading import bluepri_home

    return bluepri_home() / "registry"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def one_line(text: Any, what: str) -> str:
    """History events hold one-line reasons; an empty reason is no reason."""
    line = " ".join(str(text or "").split())
    if not line:
        raise BluepriError(f"{what} must not be empty")
    return line[:500]


def json_safe(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN, and a NaN loss is no measurement."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_json(value: Any) -> bytes:
    return json.dumps(json_safe(value), indent=None, sort_keys=True, default=str).encode()


def as_number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BluepriError(f"{what} {value!r} is not a number") from None


class AdapterRegistry:
    """Put, get, list, verify, promote and roll back adapters under one root (path or URI)."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        filesystem: pafs.FileSystem | None = None,
    ):
        """`root`: a local path or URI; or, with `filesystem` (e.g. an S3FileSystem built
        with explicit credentials), a path inside that filesystem.
        """
        root = default_root() if root is None else root
        self.uri = str(root)
        if filesystem is None:
            self.fs, path = storage.resolve(root)
        else:
            self.fs, path = filesystem, filesystem.normalize_path(str(root))
        self.root = path.rstrip("/")
        if not self.root:
            raise BluepriError(f"registry root {self.uri!r} cannot be a filesystem's top level")
        # A URI root (s3://, gs://, even file://) or a non-local filesystem is remote: `get`
        # hands out a verified local copy under cache_dir instead of a path inside the root.
        self.remote = storage.is_uri(self.uri) or not isinstance(self.fs, pafs.LocalFileSystem)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        # Event files are immutable, so each is parsed once per registry object, however
        # often the champion is replayed (a serve replica resolves it on every request).
        self._event_cache: dict[str, dict[str, Any]] = {}

    # -- paths and raw IO: every access goes through `_path` -------------------------------

    def _path(self, *parts: str) -> str:
        """A path inside the root, or a BluepriError; symlinks are followed on local roots."""
        path = posixpath.normpath("/".join([self.root, *parts]))
        inside = path.startswith(self.root + "/")
        if inside and isinstance(self.fs, pafs.LocalFileSystem):
            # A link planted under the root must not lead reads or writes out of it.
            real, real_root = os.path.realpath(path), os.path.realpath(self.root)
            inside = real.startswith(real_root + os.sep)
        if not inside:
            raise BluepriError(f"refusing path {path!r}: it is outside the registry root")
        return path

    def _type(self, path: str) -> pafs.FileType:
        return self.fs.get_file_info(path).type

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def _children(self, path: str) -> list[pafs.FileInfo]:
        if self._type(path) != DIRECTORY:
            return []
        return self.fs.get_file_info(pafs.FileSelector(path, recursive=False))

    def _files(self, name: str, version: str) -> list[str]:
        """Relative paths of the files in a stored version."""
        folder = self._path(name, version)
        infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
        return sorted(i.path[len(folder) + 1 :] for i in infos if i.type == FILE)

    def _uri(self, *parts: str) -> str:
        path = self._path(*parts)
        return storage.join(self.uri, *parts) if storage.is_uri(self.uri) else path

    # -- names and versions -------------------------------------------------------------

    def names(self) -> list[str]:
        """Adapter names in the registry, sorted."""
        found = (i.base_name for i in self._children(self.root) if i.type == DIRECTORY)
        return sorted(n for n in found if is_valid_id(n))

    def _name_dir(self, name: str) -> str:
        folder = self._path(check_name(name))
        if self._type(folder) != DIRECTORY:
            raise BluepriError(f"no adapter named {name!r} in registry {self.uri}")
        return folder

    def versions(self, name: str) -> list[str]:
        """Complete versions of `name` (those whose adapter.json is written), oldest first."""
        folder = self._name_dir(name)
        candidates = (i.base_name for i in self._children(folder) if i.type == DIRECTORY)
        found = [
            v
            for v in candidates
            if is_valid_id(v)
            and v not in RESERVED_VERSIONS
            and self._type(self._path(name, v, ADAPTER_JSON)) == FILE
        ]
        return sorted(found, key=version_sort_key)

    def resolve_version(self, name: str, version: str = CHAMPION) -> str:
        """A concrete version for `champion`, `latest` or a version id that exists."""
        if version not in (CHAMPION, LATEST):
            check_version(version)  # a malformed id is refused before anything is looked up
        self._name_dir(name)
        if version == CHAMPION:
            current = self.champion(name)
            if current is None:
                raise BluepriError(
                    f"adapter {name!r} has no champion yet; promote a version first "
                    f"(bluepri adapters promote {name} VERSION --reason ...)"
                )
            return current
        if version == LATEST:
            found = self.versions(name)
            if not found:
                raise BluepriError(f"adapter {name!r} has no complete version")
            return found[-1]
        if self._type(self._path(name, version, ADAPTER_JSON)) != FILE:
            raise BluepriError(f"no version {version!r} of adapter {name!r} in {self.uri}")
        return version

    def _claim_version(self, name: str, version: str | None) -> str:
        """Create the version's folder exclusively: `version`, or the first free `vNNNN`
        past the highest numbered folder (complete or not)."""
        self.fs.create_dir(self._path(name), recursive=True)
        if version is not None:
            if not atomic.create_dir(self.fs, self._path(name, version)):
                raise BluepriError(
                    f"version {name}/{version} already exists; versions are immutable"
                )
            return version
        numbers = [version_number(i.base_name) for i in self._children(self._path(name))]
        highest = max([n for n in numbers if n is not None], default=0)
        number = atomic.first_created(
            lambda n: atomic.create_dir(self.fs, self._path(name, f"v{n:04d}")),
            highest + 1,
            f"version of {name!r}",
        )
        return f"v{number:04d}"

    # -- put ----------------------------------------------------------------------------

    def put(self, source: str | Path, name: str, version: str | None = None) -> AdapterRecord:
        """Copy an adapter artifact folder (path or URI) in as `name/version`.

        With no `version`, weights already stored under `name` (same sha256, and they still
        verify) are not stored again: that version's record is returned and no event is
        added, so re-running a job adds nothing. Otherwise the next free `vNNNN` is claimed.
        Two concurrent puts of the same weights may both store them; nothing else breaks.
        """
        check_name(name)
        if version is not None:
            check_version(version)
        artifact = read_artifact(source)
        if version is None:
            existing = self._version_holding(name, artifact.digest)
            if existing is not None:
                return existing
        version = self._claim_version(name, version)
        try:
            self._copy_in(artifact, name, version)
            put = {"version": version, "sha256": artifact.digest, "source": str(source)}
            self._append_event(name, {"action": "put", **put})
            # Last: a version exists once adapter.json does, and by then its put event does.
            atomic.write_file(self.fs, self._path(name, version, ADAPTER_JSON), artifact.raw)
        except BaseException:
            self._undo_put(name, version)
            raise
        uri = self._uri(name, version)
        return AdapterRecord(name, version, uri, artifact.digest, artifact.adapter)

    def _version_holding(self, name: str, digest: str) -> AdapterRecord | None:
        """The oldest complete version of `name` whose put recorded `digest` and that still
        verifies, or None."""
        if self._type(self._path(name)) != DIRECTORY:
            return None
        recorded = put_digests(self.read_history(name).events)
        for version in self.versions(name):
            if recorded.get(version) != digest:
                continue
            try:
                return self.verify(name, version)
            except BluepriError:
                continue  # damaged: store a good copy instead of handing this one out
        return None

    def _copy_in(self, artifact: SourceArtifact, name: str, version: str) -> None:
        """Every file but adapter.json, the weights checked on the way in."""
        for rel in artifact.files:
            if rel == ADAPTER_JSON:
                continue
            target = self._path(name, version, rel)
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            got = copy_hashed(artifact.fs, f"{artifact.root}/{rel}", self.fs, target)
            if rel == WEIGHTS_NAME and got != artifact.digest:
                raise checksum_mismatch(
                    artifact.where, artifact.digest, got, "refusing to store it"
                )
        # Checked on the stored copy: that is the file every later reader gets.
        check_safetensors_header(self.fs, self._path(name, version, WEIGHTS_NAME), artifact.where)

    def _undo_put(self, name: str, version: str) -> None:
        """Remove the folder a failed put claimed, freeing its number. A put event already
        written stays (events are never taken back: a reader may have read it); a later put
        of the same number records its own, later event, and the latest put is the one that
        counts (`put_digests`)."""
        folder = self._path(name, version)
        if self._type(folder) == DIRECTORY:
            self.fs.delete_dir(folder)

    # -- reading and verifying ------------------------------------------------------------

    def _stored(self, name: str, version: str, digests: dict[str, str] | None = None) -> Stored:
        """A version's adapter.json, cross-checked with the digest its put event recorded."""
        where = f"adapter {name}/{version}"
        raw = self._read(self._path(name, version, ADAPTER_JSON))
        adapter = adapter_info(raw, where)
        digest = adapter.weights.sha256
        if digests is None:
            digests = put_digests(self.read_history(name).events)
        recorded = digests.get(version)
        if recorded is None:
            raise BluepriError(
                f"{where} has no put event in the registry history; refusing to load it "
                "(its sha256 cannot be cross-checked)"
            )
        if recorded != digest:
            raise BluepriError(
                f"checksum mismatch for {where}: adapter.json changed after put (registry "
                f"recorded sha256 {recorded[:16]}...); refusing to load"
            )
        return Stored(adapter, raw, digest)

    def _record(self, name: str, version: str, stored: Stored) -> AdapterRecord:
        return AdapterRecord(name, version, self._uri(name, version), stored.digest, stored.adapter)

    def _checked_files(self, name: str, version: str) -> list[str]:
        where = f"adapter {name}/{version}"
        files = self._files(name, version)
        refuse_pickles(files, where)
        if WEIGHTS_NAME not in files:
            raise BluepriError(f"{where} has no {WEIGHTS_NAME}")
        for rel in files:
            check_relative_file(rel)
        return files

    def verify(self, name: str, version: str = CHAMPION) -> AdapterRecord:
        """Check a stored version (no pickles, safetensors header, sha256); its record."""
        version = self.resolve_version(name, version)
        where = f"adapter {name}/{version}"
        self._checked_files(name, version)
        stored = self._stored(name, version)
        weights = self._path(name, version, WEIGHTS_NAME)
        check_safetensors_header(self.fs, weights, where)
        actual = sha256_of(self.fs, weights)
        if actual != stored.digest:
            raise checksum_mismatch(where, stored.digest, actual)
        return self._record(name, version, stored)

    def get(self, name: str, version: str = CHAMPION) -> Path:
        """A local folder holding the verified artifact (checked on every call).

        Local roots hand out the stored folder itself; remote roots an immutable copy in the
        cache, named by the version and the digest of its adapter.json (`cache.py`).
        """
        if not self.remote:
            return Path(self.verify(name, version).uri)
        return self._cached_copy(name, self.resolve_version(name, version))

    def _cache_root(self) -> Path:
        from bluepri.models.loading import bluepri_home

        base = self.cache_dir if self.cache_dir is not None else bluepri_home() / "registry-cache"
        return base / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def _cached_copy(self, name: str, version: str) -> Path:
        stored = self._stored(name, version)
        local = cache.copy_folder(self._cache_root(), name, version, stored.raw)
        if cache.is_intact(local, stored.raw, stored.digest):
            return local
        cache.remove_if_damaged(local, stored.raw, stored.digest)
        cache.build_in_place(
            local,
            lambda staging: self._copy_out(name, version, pafs.LocalFileSystem(), str(staging)),
        )
        # Ours, or another process's that won the rename: checked the same way either way.
        if not cache.is_intact(local, stored.raw, stored.digest):
            raise BluepriError(f"cache copy of adapter {name}/{version} at {local} is damaged")
        return local

    def _copy_out(self, name: str, version: str, dest_fs: pafs.FileSystem, dest_root: str) -> None:
        """Copy a version's files out, verifying the weights' sha256 on the way."""
        where = f"adapter {name}/{version}"
        files = self._checked_files(name, version)
        stored = self._stored(name, version)
        dest_fs.create_dir(dest_root, recursive=True)
        for rel in files:
            target = f"{dest_root}/{rel}"
            dest_fs.create_dir(posixpath.dirname(target), recursive=True)
            if rel == ADAPTER_JSON:  # the bytes that were checked, not a second read
                with dest_fs.open_output_stream(target) as stream:
                    stream.write(stored.raw)
                continue
            got = copy_hashed(self.fs, self._path(name, version, rel), dest_fs, target)
            if rel == WEIGHTS_NAME and got != stored.digest:
                raise checksum_mismatch(where, stored.digest, got)
        check_safetensors_header(dest_fs, f"{dest_root}/{WEIGHTS_NAME}", where)

    def load_state_dict(self, name: str, version: str = CHAMPION) -> dict[str, Any]:
        """The weights as tensors, parsed from the very bytes whose sha256 was checked."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        version = self.resolve_version(name, version)
        where = f"adapter {name}/{version}"
        self._checked_files(name, version)
        stored = self._stored(name, version)
        data = self._read(self._path(name, version, WEIGHTS_NAME))
        actual = hashlib.sha256(data).hexdigest()
        if actual != stored.digest:
            raise checksum_mismatch(where, stored.digest, actual)
        try:
            return load(data)
        except SafetensorError as err:
            raise BluepriError(f"{where}: weights are not valid safetensors ({err})") from None

    def scan(self, name: str | None = None) -> Listing:
        """Records of every complete version (of one name, or all), without hashing weights,
        and the entries skipped because they are broken (adapter.json, history)."""
        names = [name] if name is not None else self.names()
        records, problems = [], []
        for each in names:
            history = self.read_history(each)
            problems.extend(history.problems)
            digests = put_digests(history.events)
            for version in self.versions(each):
                try:
                    records.append(
                        self._record(each, version, self._stored(each, version, digests))
                    )
                except BluepriError as err:
                    problems.append(Problem(f"{each}/{version}", str(err)))
        return Listing(records, problems)

    def list(self, name: str | None = None) -> list[AdapterRecord]:
        """`scan`'s records; each broken entry skipped is reported as a `RegistryWarning`."""
        listing = self.scan(name)
        warn(listing.problems)
        return listing.records

    def show(self, name: str, version: str = CHAMPION) -> dict[str, Any]:
        """adapter.json plus where the version lives, its files and whether it is champion."""
        version = self.resolve_version(name, version)
        stored = self._stored(name, version)
        folder = self._path(name, version)
        sizes = {
            i.path[len(folder) + 1 :]: i.size
            for i in self.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
            if i.type == FILE
        }
        return {
            "name": name,
            "version": version,
            "uri": self._uri(name, version),
            "sha256": stored.digest,
            "champion": self.champion(name) == version,
            "files": dict(sorted(sizes.items())),
            "adapter": stored.adapter.model_dump(mode="json"),
        }

    # -- history ----------------------------------------------------------------------------

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every put, promote, reject and rollback of `name`, oldest first; broken entries
        are skipped and reported as `RegistryWarning`s."""
        history = self.read_history(name)
        warn(history.problems)
        return history.events

    def read_history(self, name: str) -> History:
        """The older layout's log first, then the event files in sequence order."""
        self._name_dir(name)
        history = History()
        legacy = self._path(name, LEGACY_HISTORY)
        if self._type(legacy) == FILE:
            history = parse_legacy_log(self._read(legacy), f"{name}/{LEGACY_HISTORY}")
        for path in self._event_paths(name):
            where = f"{name}/{HISTORY_DIR}/{posixpath.basename(path)}"
            try:
                history.events.append(self._event(path, where))
            except BluepriError as err:
                history.problems.append(Problem(where, str(err)))
        return history

    def _event_paths(self, name: str) -> list[str]:
        numbered = [
            (event_sequence(i.base_name), i.path)
            for i in self._children(self._path(name, HISTORY_DIR))
            if i.type == FILE
        ]
        return [path for number, path in sorted((n, p) for n, p in numbered if n is not None)]

    def _event(self, path: str, where: str) -> dict[str, Any]:
        if path not in self._event_cache:
            self._event_cache[path] = parse_event(self._read(path), where)
        return self._event_cache[path]

    def _append_event(self, name: str, event: dict[str, Any]) -> str:
        """Create the event's file under the next free sequence number; its path."""
        data = to_json({"at": utc_now(), **event})
        paths = self._event_paths(name)
        start = event_sequence(posixpath.basename(paths[-1])) + 1 if paths else 1
        number = atomic.first_created(
            lambda n: atomic.create_file(
                self.fs, self._path(name, HISTORY_DIR, event_file(n)), data
            ),
            start,
            f"history event of {name!r}",
        )
        return self._path(name, HISTORY_DIR, event_file(number))

    # -- champion and decisions ------------------------------------------------------------

    def champion(self, name: str) -> str | None:
        """The champion version of `name`, replayed from its history; None when none was
        promoted (or there is no such name)."""
        if self._type(self._path(check_name(name))) != DIRECTORY:
            return None
        stack = self._champion_stack(name)
        return stack[-1] if stack else None

    def _champion_stack(self, name: str) -> list[str]:
        history = self.read_history(name)
        warn(history.problems)  # a skipped promote or rollback may change who is champion
        return champion_stack(history.events)

    def _decide(
        self,
        name: str,
        action: str,
        version: str,
        reason: str,
        metrics: dict[str, Any],
        before: str | None,
    ) -> Decision:
        """Record a decision taken on the champion `before`; the event is all there is to it
        (the champion is replayed from the history)."""
        decision = Decision(
            name=name,
            action=action,
            version=version,
            champion_before=before,
            champion_after=before if action == "reject" else version,
            reason=one_line(reason, "reason"),
            metrics=json_safe(dict(metrics)),
            at=utc_now(),
        )
        self._append_event(name, {k: v for k, v in asdict(decision).items() if k != "name"})
        return decision

    def promote(
        self, name: str, version: str, reason: str, metrics: dict[str, Any] | None = None
    ) -> Decision:
        """Make `version` the champion (after verifying it), recording why."""
        version = self.resolve_version(name, version)
        self.verify(name, version)  # never crown weights that would not load
        before = self.champion(name)
        return self._decide(name, "promote", version, reason, metrics or {}, before)

    def rollback(self, name: str, reason: str) -> Decision:
        """Make the champion before the current one champion again (from the history)."""
        stack = self._champion_stack(check_name(name))
        if not stack:
            raise BluepriError(f"adapter {name!r} has no champion to roll back")
        if len(stack) < 2:
            raise BluepriError(f"adapter {name!r} has no earlier champion to roll back to")
        current, target = stack[-1], stack[-2]
        self.verify(name, target)
        return self._decide(name, "rollback", target, reason, {"from": current}, current)

    def record_decision(
        self,
        name: str,
        candidate_version: str,
        decision: str,
        reason: str,
        candidate_metric: float | None,
        champion_metric: float | None,
        *,
        metric: str = "val_loss",
    ) -> Decision:
        """Record a promote/reject decision with both numbers; a promote moves the champion."""
        if decision not in DECISIONS:
            raise BluepriError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        version = self.resolve_version(name, candidate_version)
        if decision == "promote":
            self.verify(name, version)
        before = self.champion(name)
        metrics = {
            "metric": metric,
            "candidate": None if candidate_metric is None else as_number(candidate_metric, metric),
            "champion": None if champion_metric is None else as_number(champion_metric, metric),
            "champion_version": before,
        }
        return self._decide(name, decision, version, reason, metrics, before)

    def promote_if_better(
        self,
        name: str,
        version: str,
        candidate_loss: float,
        champion_loss: float | None,
        *,
        metric: str = "val_loss",
        reason: str = "",
    ) -> Decision:
        """Promote `version` only if its loss beats the champion's (lower is better).

        Both losses should be measured now, on the same validation split; the decision is
        recorded with both numbers either way. With no champion yet, a finite loss wins.
        """
        version = self.resolve_version(name, version)
        current = self.champion(name)
        candidate = as_number(candidate_loss, metric)
        champion = None if champion_loss is None else as_number(champion_loss, metric)
        if current is not None and current != version and champion is None:
            raise BluepriError(
                f"adapter {name!r} has champion {current}: pass its re-measured {metric}"
            )
        action, why = compare_losses(metric, version, candidate, current, champion)
        full = f"{reason.strip()}: {why}" if reason.strip() else why
        return self.record_decision(name, version, action, full, candidate, champion, metric=metric)

    # -- export ---------------------------------------------------------------------------

    def export(self, name: str, version: str, out_dir: str | Path, format: str = "kohya") -> str:
        """Write a verified copy for other tools; returns the file (kohya) or folder written.

        kohya: `<out_dir>/<name>-<version>.safetensors` in kohya/ComfyUI/A1111 keys;
        diffusers: `<out_dir>/<name>-<version>/`, the artifact folder as stored.
        """
        if format not in EXPORT_FORMATS:
            raise BluepriError(f"export format must be one of {', '.join(EXPORT_FORMATS)}")
        version = self.resolve_version(name, version)
        self._refuse_inside_root(out_dir)
        stem = f"{name}-{version}"
        if format == "diffusers":
            dest_fs, dest = storage.resolve(storage.join(out_dir, stem))
            self._copy_out(name, version, dest_fs, dest)
            return storage.join(out_dir, stem)
        from bluepri.registry.export import kohya_metadata, kohya_safetensors

        stored = self._stored(name, version)
        data = kohya_safetensors(
            self.load_state_dict(name, version),
            alpha=stored.adapter.alpha,
            metadata=kohya_metadata(stored.adapter, f"{name}/{version}", stored.digest),
        )
        target = storage.join(out_dir, f"{stem}.safetensors")
        storage.write_bytes(target, data)
        return target

    def _refuse_inside_root(self, out_dir: str | Path) -> None:
        """Exports go elsewhere: writing into the root would bypass immutability."""
        out_fs, out_path = storage.resolve(out_dir)
        if out_fs.type_name != self.fs.type_name:
            return
        if isinstance(out_fs, pafs.LocalFileSystem):
            out_path, root = os.path.realpath(out_path), os.path.realpath(self.root)
        else:
            root = self.root
        if out_path == root or out_path.startswith(root.rstrip("/") + "/"):
            raise BluepriError(f"export folder {str(out_dir)!r} is inside the registry root")


def compare_losses(
    metric: str, version: str, candidate: float, current: str | None, champion: float | None
) -> tuple[str, str]:
    """(decision, why) for a candidate loss against the champion's; ties keep the champion."""
    if not math.isfinite(candidate):
        return "reject", f"candidate {version} {metric} is not finite ({candidate})"
    if current is None:
        return "promote", f"first champion: {version} {metric} {candidate:.6g}"
    if current == version:
        return "reject", f"{version} is already the champion"
    assert champion is not None  # promote_if_better demands it when there is a champion
    if not math.isfinite(champion):
        return "reject", f"champion {current} {metric} is not finite ({champion}); check it"
    if candidate < champion:
        return "promote", f"{version} {metric} {candidate:.6g} < champion {current} {champion:.6g}"
    return "reject", f"{version} {metric} {candidate:.6g} >= champion {current} {champion:.6g}"


def read_artifact(source: str | Path) -> SourceArtifact:
    """An artifact folder's files and typed adapter.json, refused if anything is amiss."""
    where = f"adapter artifact {str(source)!r}"
    src_fs, src_root = storage.resolve(source)
    files = artifact_files(src_fs, src_root, where)
    if ADAPTER_JSON not in files:
        raise BluepriError(f"{where} has no {ADAPTER_JSON}; is it an adapter folder?")
    raw = read_stream(src_fs, f"{src_root}/{ADAPTER_JSON}")
    adapter = adapter_info(raw, where)
    if WEIGHTS_NAME not in files:
        raise BluepriError(f"{where} has no {WEIGHTS_NAME}")
    refuse_pickles(files, where)
    return SourceArtifact(src_fs, src_root, files, raw, adapter, where)


def read_stream(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def artifact_files(fs: pafs.FileSystem, root: str, where: str) -> list[str]:
    """Relative paths of an artifact folder's own files: its top level and `validation/`."""
    info = fs.get_file_info(root)
    if info.type != DIRECTORY:
        raise BluepriError(f"{where} is not a folder")
    files = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        if entry.base_name.startswith("."):  # .DS_Store, editor files: not the artifact's
            continue
        refuse_link(fs, entry.path, where)
        if entry.type == FILE:
            files.append(entry.base_name)
        elif entry.type == DIRECTORY and entry.base_name in ARTIFACT_DIRS:
            for sub in fs.get_file_info(pafs.FileSelector(entry.path, recursive=True)):
                rel = sub.path[len(root) + 1 :]
                if any(part.startswith(".") for part in rel.split("/")):
                    continue
                refuse_link(fs, sub.path, where)
                if sub.type == FILE:
                    files.append(check_relative_file(rel))
    for rel in files:
        check_relative_file(rel)
    return sorted(files)


def refuse_link(fs: pafs.FileSystem, path: str, where: str) -> None:
    """A symlink in a local artifact could make `put` read a file outside the artifact."""
    if isinstance(fs, pafs.LocalFileSystem) and os.path.islink(path):
        raise BluepriError(f"{where} holds a symbolic link ({os.path.basename(path)}); copy files")
