"""The adapter registry: versioned, checksummed adapter artifacts and one champion per name.

    <root>/<name>/<version>/      an adapter artifact (weights, adapter.json, model card, ...)
    <root>/<name>/champion        JSON pointer: version, reason, promoted_at, both sides' metrics
    <root>/<name>/history.jsonl   one JSON line per put, promote, reject and rollback

The root is a local folder or a pyarrow filesystem URI (s3://, gs://, file://). Versions are
immutable once put. Weights are handed out (`get`, `load_state_dict`, `export`) only after
their sha256 matches adapter.json and the digest recorded when the version was put. Every
path the registry touches is built from validated ids (`ids.py`) and checked to lie inside
the root, so nothing outside it is read or written.

Writers are assumed to be one at a time (a person, or the nightly job): the pointer and the
history are replaced whole, which is atomic per file but not a lock between two writers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from bluepri import storage
from bluepri.errors import BluepriError
from bluepri.registry.checks import (
    ADAPTER_JSON,
    WEIGHTS_NAME,
    check_safetensors_header,
    checksum_mismatch,
    copy_hashed,
    expected_weights,
    parse_adapter_json,
    refuse_pickles,
    sha256_of,
)
from bluepri.registry.ids import (
    CHAMPION,
    HISTORY,
    LATEST,
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
ARTIFACT_DIRS = ("validation",)
DECISIONS = ("promote", "reject")
EXPORT_FORMATS = ("kohya", "diffusers")
DIRECTORY, FILE = pafs.FileType.Directory, pafs.FileType.File


@dataclass(frozen=True)
class AdapterRecord:
    """One stored version: where it lives, its weights' sha256 and its adapter.json."""

    name: str
    version: str
    uri: str
    sha256: str
    info: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.info.get("metrics") or {}


@dataclass(frozen=True)
class Decision:
    """A change (or refusal to change) of champion, as recorded in history.jsonl."""

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


def default_root() -> Path:
    """`$BLUEPRI_HOME/registry`: where the CLI looks when no --registry is given."""
    from bluepri.models.loading import bluepri_home

    return bluepri_home() / "registry"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def one_line(text: Any, what: str) -> str:
    """History lines and pointers hold one-line reasons; an empty reason is no reason."""
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

    def _write(self, path: str, data: bytes) -> None:
        folder = posixpath.dirname(path)
        self.fs.create_dir(folder, recursive=True)
        if not isinstance(self.fs, pafs.LocalFileSystem):
            with self.fs.open_output_stream(path) as stream:  # an object PUT is atomic
                stream.write(data)
            return
        # Write then rename, so a reader never sees half a pointer or history file.
        staging = f"{folder}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(staging) as stream:
            stream.write(data)
        os.replace(staging, path)

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

    def _next_version(self, name: str) -> str:
        """`v0001`, then one past the highest numbered folder (complete or not)."""
        folder = self._path(check_name(name))
        numbers = [version_number(i.base_name) for i in self._children(folder)]
        return f"v{max([n for n in numbers if n is not None], default=0) + 1:04d}"

    # -- put ----------------------------------------------------------------------------

    def put(self, source: str | Path, name: str, version: str | None = None) -> AdapterRecord:
        """Copy an adapter artifact folder (path or URI) in as `name/version` (default: next)."""
        check_name(name)
        if version is not None:
            check_version(version)
        where = f"adapter artifact {str(source)!r}"
        src_fs, src_root = storage.resolve(source)
        files = artifact_files(src_fs, src_root, where)
        if ADAPTER_JSON not in files:
            raise BluepriError(f"{where} has no {ADAPTER_JSON}; is it an adapter folder?")
        raw = read_stream(src_fs, f"{src_root}/{ADAPTER_JSON}")
        info = parse_adapter_json(raw, where)
        _, digest = expected_weights(info, where)
        if WEIGHTS_NAME not in files:
            raise BluepriError(f"{where} has no {WEIGHTS_NAME}")
        refuse_pickles(files, where)

        version = version or self._next_version(name)
        dest = self._path(name, version)
        if self._type(dest) != pafs.FileType.NotFound:
            raise BluepriError(f"version {name}/{version} already exists; versions are immutable")
        try:
            self._copy_in(src_fs, src_root, files, name, version, raw, digest, where)
        except BaseException:
            if self._type(dest) == DIRECTORY:
                self.fs.delete_dir(dest)
            raise
        self._append_history(
            name,
            {"action": "put", "version": version, "sha256": digest, "source": str(source)},
        )
        return AdapterRecord(name, version, self._uri(name, version), digest, info)

    def _copy_in(
        self,
        src_fs: pafs.FileSystem,
        src_root: str,
        files: list[str],
        name: str,
        version: str,
        raw_json: bytes,
        digest: str,
        where: str,
    ) -> None:
        for rel in files:
            if rel == ADAPTER_JSON:
                continue
            target = self._path(name, version, rel)
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            got = copy_hashed(src_fs, f"{src_root}/{rel}", self.fs, target)
            if rel == WEIGHTS_NAME and got != digest:
                raise checksum_mismatch(where, digest, got, "refusing to store it")
        # Checked on the stored copy: that is the file every later reader gets.
        check_safetensors_header(self.fs, self._path(name, version, WEIGHTS_NAME), where)
        # Last, and the bytes that were validated: a version exists once adapter.json does.
        self._write(self._path(name, version, ADAPTER_JSON), raw_json)

    # -- reading and verifying ------------------------------------------------------------

    def _expected(self, name: str, version: str) -> tuple[dict[str, Any], str, bytes]:
        """(adapter.json, promised sha256, its raw bytes), cross-checked with the put record."""
        where = f"adapter {name}/{version}"
        raw = self._read(self._path(name, version, ADAPTER_JSON))
        info = parse_adapter_json(raw, where)
        _, digest = expected_weights(info, where)
        recorded = self._put_digest(name, version)
        if recorded is not None and recorded != digest:
            raise BluepriError(
                f"checksum mismatch for {where}: adapter.json changed after put (registry "
                f"recorded sha256 {recorded[:16]}...); refusing to load"
            )
        return info, digest, raw

    def _put_digest(self, name: str, version: str) -> str | None:
        puts = [e for e in self.history(name) if e.get("action") == "put"]
        digests = [e.get("sha256") for e in puts if e.get("version") == version]
        return digests[-1] if digests else None

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
        info, digest, _ = self._expected(name, version)
        weights = self._path(name, version, WEIGHTS_NAME)
        check_safetensors_header(self.fs, weights, where)
        actual = sha256_of(self.fs, weights)
        if actual != digest:
            raise checksum_mismatch(where, digest, actual)
        return AdapterRecord(name, version, self._uri(name, version), digest, info)

    def get(self, name: str, version: str = CHAMPION) -> Path:
        """A local folder holding the verified artifact (checked on every call).

        Local roots hand out the stored folder itself; remote roots a copy in the cache
        that is downloaded again whenever it no longer matches.
        """
        if not self.remote:
            return Path(self.verify(name, version).uri)
        return self._cached_copy(name, self.resolve_version(name, version))

    def _cache_root(self) -> Path:
        from bluepri.models.loading import bluepri_home

        base = self.cache_dir if self.cache_dir is not None else bluepri_home() / "registry-cache"
        return base / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def _cached_copy(self, name: str, version: str) -> Path:
        local = self._cache_root() / name / version
        _, digest, raw = self._expected(name, version)
        weights = local / WEIGHTS_NAME
        if (
            weights.is_file()
            and (local / ADAPTER_JSON).is_file()
            and (local / ADAPTER_JSON).read_bytes() == raw
            and sha256_of(pafs.LocalFileSystem(), str(weights)) == digest
        ):
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            self._copy_out(name, version, pafs.LocalFileSystem(), str(staging))
            if local.exists():
                shutil.rmtree(local)
            os.replace(staging, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def _copy_out(self, name: str, version: str, dest_fs: pafs.FileSystem, dest_root: str) -> None:
        """Copy a version's files out, verifying the weights' sha256 on the way."""
        where = f"adapter {name}/{version}"
        files = self._checked_files(name, version)
        _, digest, raw = self._expected(name, version)
        dest_fs.create_dir(dest_root, recursive=True)
        for rel in files:
            target = f"{dest_root}/{rel}"
            dest_fs.create_dir(posixpath.dirname(target), recursive=True)
            if rel == ADAPTER_JSON:  # the bytes that were checked, not a second read
                with dest_fs.open_output_stream(target) as stream:
                    stream.write(raw)
                continue
            got = copy_hashed(self.fs, self._path(name, version, rel), dest_fs, target)
            if rel == WEIGHTS_NAME and got != digest:
                raise checksum_mismatch(where, digest, got)
        check_safetensors_header(dest_fs, f"{dest_root}/{WEIGHTS_NAME}", where)

    def load_state_dict(self, name: str, version: str = CHAMPION) -> dict[str, Any]:
        """The weights as tensors, parsed from the very bytes whose sha256 was checked."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        version = self.resolve_version(name, version)
        where = f"adapter {name}/{version}"
        self._checked_files(name, version)
        _, digest, _ = self._expected(name, version)
        data = self._read(self._path(name, version, WEIGHTS_NAME))
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise checksum_mismatch(where, digest, actual)
        try:
            return load(data)
        except SafetensorError as err:
            raise BluepriError(f"{where}: weights are not valid safetensors ({err})") from None

    def list(self, name: str | None = None) -> list[AdapterRecord]:
        """Records of every complete version (of one name, or all), without hashing weights."""
        names = [name] if name is not None else self.names()
        records = []
        for each in names:
            for version in self.versions(each):
                info, digest, _ = self._expected(each, version)
                records.append(AdapterRecord(each, version, self._uri(each, version), digest, info))
        return records

    def show(self, name: str, version: str = CHAMPION) -> dict[str, Any]:
        """adapter.json plus where the version lives, its files and whether it is champion."""
        version = self.resolve_version(name, version)
        info, digest, _ = self._expected(name, version)
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
            "sha256": digest,
            "champion": self.champion(name) == version,
            "files": dict(sorted(sizes.items())),
            "adapter": info,
        }

    # -- champion, decisions, history -----------------------------------------------------

    def champion(self, name: str) -> str | None:
        """The champion version of `name`, or None when none was promoted (or no such name)."""
        path = self._path(check_name(name), CHAMPION)
        if self._type(path) != FILE:
            return None
        try:
            pointer = json.loads(self._read(path))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BluepriError(f"champion pointer of {name!r} is not valid JSON") from None
        version = pointer.get("version") if isinstance(pointer, dict) else None
        return check_version(version)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every put, promote, reject and rollback of `name`, oldest first."""
        self._name_dir(name)
        path = self._path(name, HISTORY)
        if self._type(path) != FILE:
            return []
        events = []
        for number, line in enumerate(self._read(path).decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise BluepriError(f"history of {name!r}: line {number} is not JSON") from None
        return events

    def _append_history(self, name: str, event: dict[str, Any]) -> None:
        # Object stores cannot append: the file is rewritten whole (small: a line a night).
        path = self._path(name, HISTORY)
        old = self._read(path) if self._type(path) == FILE else b""
        self._write(path, old + to_json({"at": utc_now(), **event}) + b"\n")

    def _decide(
        self, name: str, action: str, version: str, reason: str, metrics: dict[str, Any]
    ) -> Decision:
        before = self.champion(name)
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
        event = {k: v for k, v in asdict(decision).items() if k != "name"}
        # The record of the decision first: if the pointer write then fails, the history
        # still says what was meant, and a rerun of the same promote repairs the pointer.
        self._append_history(name, event)
        if action != "reject":
            pointer = {
                "version": version,
                "action": action,
                "reason": decision.reason,
                "promoted_at": decision.at,
                "previous": before,
                "metrics": decision.metrics,
            }
            self._write(
                self._path(name, CHAMPION), json.dumps(pointer, indent=2, sort_keys=True).encode()
            )
        return decision

    def promote(
        self, name: str, version: str, reason: str, metrics: dict[str, Any] | None = None
    ) -> Decision:
        """Make `version` the champion (after verifying it), recording why."""
        version = self.resolve_version(name, version)
        self.verify(name, version)  # never crown weights that would not load
        return self._decide(name, "promote", version, reason, metrics or {})

    def rollback(self, name: str, reason: str) -> Decision:
        """Make the champion before the current one champion again (from the history)."""
        current = self.champion(name)
        if current is None:
            raise BluepriError(f"adapter {name!r} has no champion to roll back")
        stack = self._champion_stack(name)
        if len(stack) < 2:
            raise BluepriError(f"adapter {name!r} has no earlier champion to roll back to")
        target = stack[-2]
        self.verify(name, target)
        return self._decide(name, "rollback", target, reason, {"from": current})

    def _champion_stack(self, name: str) -> list[str]:
        """Champions in the order crowned, replaying history: a rollback pops the top."""
        stack: list[str] = []
        for event in self.history(name):
            if event.get("action") == "promote":
                stack.append(event["version"])
            elif event.get("action") == "rollback" and stack:
                stack.pop()
        return stack

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
        metrics = {
            "metric": metric,
            "candidate": None if candidate_metric is None else as_number(candidate_metric, metric),
            "champion": None if champion_metric is None else as_number(champion_metric, metric),
            "champion_version": self.champion(name),
        }
        return self._decide(name, decision, version, reason, metrics)

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

        info, digest, _ = self._expected(name, version)
        data = kohya_safetensors(
            self.load_state_dict(name, version),
            alpha=info.get("alpha"),
            metadata=kohya_metadata(info, f"{name}/{version}", digest),
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
