"""``RunDir``: a manifest plus one atomically written result file per condition (see :mod:`depthprobe.results`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from depthprobe.results.manifest import (
    CONDITIONS,
    DAMAGED,
    IDENTITY_KEYS,
    MANIFEST,
    RECORD_KEYS,
    DamagedRunError,
    ManifestMismatchError,
    first_difference,
    identity_digest,
    identity_fields,
)

__all__ = ["RunDir"]


def _file_name(condition: str) -> str:
    """A safe, unique file name for a condition id (long ids are shortened with a hash)."""
    safe = re.sub(r"[^A-Za-z0-9_.,=@+-]", "_", condition)
    digest = hashlib.sha1(condition.encode()).hexdigest()[:12]
    if len(safe) > 96:
        safe = safe[:80]
    return f"{safe}-{digest}.json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_manifest(file: Path) -> dict[str, Any]:
    """The manifest as a dict; a damaged one is one ``DamagedRunError`` line naming the file and the remedy."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        problem = None if isinstance(data, dict) else f"it holds a JSON {type(data).__name__}, not an object"
    except UnicodeDecodeError:
        problem = "it is not UTF-8 text"
    except json.JSONDecodeError as err:
        problem = f"it is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if problem:
        raise DamagedRunError(
            f"{file} is damaged: {problem}; delete it and re-run the command (each condition file carries the "
            f"digest of its own settings, so only results of the same settings are kept), or use another output "
            f"directory"
        )
    return data


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A condition file's record, or ``(None, what is wrong with it)``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"it is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if not isinstance(record, dict):
        return None, f"it holds a JSON {type(record).__name__}, not an object"
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        return None, f"it lacks {', '.join(missing)}"
    if not isinstance(record["metrics"], dict) or not isinstance(record["samples"], list):
        return None, "its metrics or samples have the wrong type"
    return record, None


def mismatch_error(path: Path, record: Mapping[str, Any], digest: str) -> ManifestMismatchError:
    return ManifestMismatchError(
        f"{path} was computed under other settings (run identity {str(record.get('run_digest'))[:12]}, "
        f"this run directory's is {digest[:12]}): another model, weights, data, task option, limit, shots or "
        f"version; use another output directory, or delete the file to recompute it here"
    )


class RunDir:
    """A run directory bound to one run identity; creates it, or checks that an existing one agrees.

    ``manifest`` is what ``build_manifest`` returns (any mapping with the ``IDENTITY_KEYS``).
    Its digest is stored in the manifest and in every condition file; a directory or a file
    made under another identity raises ``ManifestMismatchError`` naming the field or the file.
    Nothing is written when the check fails.
    """

    def __init__(self, path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = json.loads(json.dumps(dict(manifest), default=str))
        self.digest = identity_digest(self.manifest)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file, not a run directory; choose another output directory")
        self.path.mkdir(parents=True, exist_ok=True)
        # not thread-local: worker threads of this process writing conditions share the hold of the main thread
        self._lock = FileLock(str(self.path / ".lock"), thread_local=False)
        with FileLock(str(self.path / ".manifest.lock")):
            file = self.path / MANIFEST
            if file.is_file():
                old = read_manifest(file)
                self._check_agrees(old)
                self.manifest = old
            else:
                (self.path / CONDITIONS).mkdir(exist_ok=True)
                for existing in sorted((self.path / CONDITIONS).glob("[!.]*.json")):
                    self._check_file(existing)  # results left without a manifest must be ours to adopt
                _write_atomic(
                    file, json.dumps({**self.manifest, "identity_digest": self.digest}, indent=2, sort_keys=True)
                )
        (self.path / CONDITIONS).mkdir(exist_ok=True)

    def _check_agrees(self, old: Mapping[str, Any]) -> None:
        if "identity_digest" not in old:
            raise ManifestMismatchError(
                f"{self.path} was made by an older depthprobe whose run directories lack a run identity; "
                f"use another output directory, or delete this one to recompute it"
            )
        old_identity, new_identity = identity_fields(old), identity_fields(self.manifest)
        for key in IDENTITY_KEYS:
            diff = first_difference(old_identity.get(key), new_identity.get(key), key)
            if diff:
                name, was, now = diff
                edited = " (None: as load_model loaded them; live-...: changed in memory)" if name == "weights" else ""
                raise ManifestMismatchError(
                    f"{self.path} holds a run with {name}={was!r}, but this command has "
                    f"{name}={now!r}{edited}; use another output directory to keep both"
                )

    def condition_path(self, condition: str) -> Path:
        return self.path / CONDITIONS / _file_name(condition)

    def _move_aside(self, path: Path, problem: str) -> None:
        target_dir = self.path / DAMAGED
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
        os.replace(path, target)
        print(
            f"depthprobe: damaged condition file {path} ({problem}) moved to {target}; it will be recomputed",
            file=sys.stderr,
        )

    def _check_file(self, path: Path, condition: str | None = None, condition_digest: str | None = None) -> bool:
        """True for a sound result of this run; a damaged file is moved aside (False), a foreign one refused."""
        record, problem = read_record(path)
        if record is None:
            self._move_aside(path, problem or "unreadable")
            return False
        if record["run_digest"] != self.digest:
            raise mismatch_error(path, record, self.digest)
        if condition is not None and record["condition"] != condition:
            raise ManifestMismatchError(
                f"{path} holds condition {record['condition']!r}, not {condition!r}; delete the file to recompute it"
            )
        stored = record.get("condition_digest")
        if condition_digest is not None and stored is not None and stored != condition_digest:
            raise ManifestMismatchError(
                f"{path} holds {record['condition']!r} computed with other intervention settings (its data, e.g. an "
                f"o_proj source, differs); delete the file to recompute it, or use another output directory"
            )
        return True

    def done(self, condition: str, condition_digest: str | None = None) -> bool:
        """Whether ``condition`` has a sound result file of this run (a damaged one is moved aside and is not done).

        With ``condition_digest`` (of the interventions as data, see ``sweep.condition_digest``), a file
        computed under the same id but other intervention data (another o_proj source) is refused.
        """
        path = self.condition_path(condition)
        return path.is_file() and self._check_file(path, condition, condition_digest)

    def n_done(self) -> int:
        """How many condition files the run directory holds."""
        return sum(1 for _ in (self.path / CONDITIONS).glob("[!.]*.json"))

    @contextlib.contextmanager
    def writing(self) -> Iterator[RunDir]:
        """Hold the run directory's lock while writing; waits (saying so) while another process holds it.

        Re-entrant within a process. A second process with the same identity thus waits for
        the first and then finds its conditions done; one with another identity never gets
        here (its ``RunDir`` is refused at once).
        """
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            print(
                f"depthprobe: another process is writing {self.path} with the same settings; waiting for it "
                f"(conditions it finishes are not recomputed)",
                file=sys.stderr,
                flush=True,
            )
            self._lock.acquire()
        try:
            yield self
        finally:
            self._lock.release()

    def write(
        self, condition: str, metrics: Mapping[str, float], samples: pd.DataFrame | None = None, **info: Any
    ) -> Path:
        """Store one finished condition atomically (``info``: layer, kind, wall time, ...)."""
        record = {
            "condition": condition,
            **info,
            "run_digest": self.digest,
            "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
            "samples": [] if samples is None else json.loads(samples.to_json(orient="records", double_precision=15)),
        }
        path = self.condition_path(condition)
        with self.writing():
            _write_atomic(path, json.dumps(record, default=str))
        return path
