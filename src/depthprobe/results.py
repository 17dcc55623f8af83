"""Run directories: a manifest plus one atomically written result file per condition.

Layout::

    run_dir/manifest.json              what was run: the run identity (model and a content hash
                                       of its weights, whether they were edited in memory, dtype,
                                       device kind, attention implementation (depthprobe.identity),
                                       task and options, content hashes of the
                                       data read, protocol, shots, seed, limit, package versions)
                                       with its digest, plus provenance (toolkit commit, paths)
    run_dir/conditions/<name>.json     one finished condition: metrics, ids, per-sample rows and
                                       the digest of the identity it was computed under
    run_dir/damaged/                   condition files that could not be read, moved aside
    run_dir/.lock, .manifest.lock      held while a process writes / checks the manifest

A condition file appears only complete (temporary file, fsync, ``os.replace``), so a killed
sweep loses at most the condition in flight, and re-running the same command skips every
condition already on disk. A run directory, or a single condition file, made under another
identity is refused by name, never mixed; a damaged condition file is moved aside and
recomputed. One process writes a run directory at a time (``RunDir.writing``); another with the
same identity waits for it and then finds its work done, one with another identity is refused at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from depthprobe.identity import resolved
from depthprobe.uncertainty import add_delta_uncertainty

__all__ = [
    "IDENTITY_KEYS",
    "DamagedRunError",
    "ManifestMismatchError",
    "RunDir",
    "build_manifest",
    "identity_digest",
    "load_results",
]

MANIFEST = "manifest.json"
CONDITIONS = "conditions"
DAMAGED = "damaged"
#: Manifest fields that make a run what it is: two commands agreeing on all of them compute the same numbers.
IDENTITY_KEYS = ("model", "revision", "dtype", "device", "attn_implementation", "weights", "task", "task_options",
                 "protocol", "num_fewshot", "seed", "limit", "max_gen_toks", "data", "versions")
#: Identity keys left out of the digest while None, so run directories made before they existed keep theirs.
_OPTIONAL_KEYS = ("weights",)
_PACKAGES = ("depthprobe", "torch", "transformers", "transformer-lens", "pandas", "lm_eval")
_RECORD_KEYS = ("condition", "metrics", "samples", "run_digest")


class ManifestMismatchError(ValueError):
    """A run directory, or a condition file in it, made by a different command (other model, task or settings)."""


class DamagedRunError(ValueError):
    """A run directory's manifest or condition file that cannot be read; the message names the file and what to do."""


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    """The toolkit's git commit (``+dirty`` when its tree has changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def build_manifest(
    model: Any,
    *,
    task: str,
    protocol: str,
    num_fewshot: int | None = None,
    seed: int | None = None,
    limit: int | None = None,
    task_options: Mapping[str, Any] | None = None,
    max_gen_toks: int | None = None,
    data: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a sweep command runs, for ``RunDir``: the identity fields plus provenance (commit, paths).

    ``model`` is a loaded model, a ``ModelSpec`` or either resolved (``depthprobe.identity.ResolvedModel``). ``data``
    describes the documents: ``{"files": {name: sha256}, "documents": sha256 of the
    prompts and answers evaluated}`` (``run_sweep`` fills it in).
    """
    ident = resolved(model).identity
    manifest: dict[str, Any] = {
        "model": ident["name"], "revision": ident["revision"], "dtype": ident["dtype"], "device": ident["device"],
        "attn_implementation": ident["attn_implementation"], "weights": ident["weights"],
        "task": task, "task_options": dict(sorted((task_options or {}).items())), "protocol": protocol,
        "num_fewshot": num_fewshot, "seed": seed, "limit": limit, "max_gen_toks": max_gen_toks,
        "data": dict(data) if data is not None else None,
    }
    manifest.update(extra)
    manifest["versions"] = _versions()
    manifest["git_commit"] = _git_commit()
    return json.loads(json.dumps(manifest, default=str))  # exactly what a reload will see


def _identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(dict(manifest), default=str))
    return {key: plain.get(key) for key in IDENTITY_KEYS if key not in _OPTIONAL_KEYS or plain.get(key) is not None}


def identity_digest(manifest: Mapping[str, Any]) -> str:
    """The SHA-256 of a manifest's identity fields (``IDENTITY_KEYS``): equal digests, same computation."""
    return hashlib.sha256(json.dumps(_identity(manifest), sort_keys=True).encode()).hexdigest()


def _first_difference(old: Any, new: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first leaf where two identity values differ, as ``(dotted key, old, new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(k), new.get(k), f"{key}.{k}")
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


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


def _read_manifest(file: Path) -> dict[str, Any]:
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


def _read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A condition file's record, or ``(None, what is wrong with it)``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except json.JSONDecodeError as err:
        return None, f"it is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if not isinstance(record, dict):
        return None, f"it holds a JSON {type(record).__name__}, not an object"
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        return None, f"it lacks {', '.join(missing)}"
    if not isinstance(record["metrics"], dict) or not isinstance(record["samples"], list):
        return None, "its metrics or samples have the wrong type"
    return record, None


def _mismatch(path: Path, record: Mapping[str, Any], digest: str) -> ManifestMismatchError:
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
                old = _read_manifest(file)
                self._check_agrees(old)
                self.manifest = old
            else:
                (self.path / CONDITIONS).mkdir(exist_ok=True)
                for existing in sorted((self.path / CONDITIONS).glob("[!.]*.json")):
                    self._check_file(existing)  # results left without a manifest must be ours to adopt
                _write_atomic(file, json.dumps({**self.manifest, "identity_digest": self.digest}, indent=2,
                                               sort_keys=True))
        (self.path / CONDITIONS).mkdir(exist_ok=True)

    def _check_agrees(self, old: Mapping[str, Any]) -> None:
        if "identity_digest" not in old:
            raise ManifestMismatchError(
                f"{self.path} was made by an older depthprobe whose run directories lack a run identity; "
                f"use another output directory, or delete this one to recompute it"
            )
        old_identity, new_identity = _identity(old), _identity(self.manifest)
        for key in IDENTITY_KEYS:
            diff = _first_difference(old_identity.get(key), new_identity.get(key), key)
            if diff:
                name, was, now = diff
                edited = " (None: as load_model loaded them; live-...: changed in memory)" if name == "weights" else ""
                raise ManifestMismatchError(f"{self.path} holds a run with {name}={was!r}, but this command has "
                                            f"{name}={now!r}{edited}; use another output directory to keep both")

    def condition_path(self, condition: str) -> Path:
        return self.path / CONDITIONS / _file_name(condition)

    def _move_aside(self, path: Path, problem: str) -> None:
        target_dir = self.path / DAMAGED
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
        os.replace(path, target)
        print(f"depthprobe: damaged condition file {path} ({problem}) moved to {target}; it will be recomputed",
              file=sys.stderr)

    def _check_file(self, path: Path, condition: str | None = None, condition_digest: str | None = None) -> bool:
        """True for a sound result of this run; a damaged file is moved aside (False), a foreign one refused."""
        record, problem = _read_record(path)
        if record is None:
            self._move_aside(path, problem or "unreadable")
            return False
        if record["run_digest"] != self.digest:
            raise _mismatch(path, record, self.digest)
        if condition is not None and record["condition"] != condition:
            raise ManifestMismatchError(f"{path} holds condition {record['condition']!r}, not {condition!r}; "
                                        f"delete the file to recompute it")
        stored = record.get("condition_digest")
        if condition_digest is not None and stored is not None and stored != condition_digest:
            raise ManifestMismatchError(
                f"{path} holds {record['condition']!r} computed with other intervention settings (its data, e.g. an "
                f"o_proj source, differs); delete the file to recompute it, or use another output directory")
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
            print(f"depthprobe: another process is writing {self.path} with the same settings; waiting for it "
                  f"(conditions it finishes are not recomputed)", file=sys.stderr, flush=True)
            self._lock.acquire()
        try:
            yield self
        finally:
            self._lock.release()

    def write(self, condition: str, metrics: Mapping[str, float], samples: pd.DataFrame | None = None,
              **info: Any) -> Path:
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


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    cond_dir = run_dir / CONDITIONS
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {MANIFEST})")
    digest = identity_digest(_read_manifest(run_dir / MANIFEST))
    records = []
    for path in sorted(cond_dir.glob("[!.]*.json")):
        record, problem = _read_record(path)
        if record is None:
            raise DamagedRunError(f"{path} is damaged: {problem}; re-run the sweep command to move it aside "
                                  f"and recompute it")
        if record["run_digest"] != digest:
            raise _mismatch(path, record, digest)
        records.append(record)
    return records


def load_results(run_dir: str | os.PathLike[str], samples: bool = False) -> pd.DataFrame:
    """The run's results: one row per condition (metrics, ``delta_<metric>`` vs baseline), or per-sample rows.

    Condition rows carry ``condition``, ``kind``, ``layer`` (first intervened layer),
    ``layer_max``, ``index`` (head or group of a single-intervention condition) and
    ``n_interventions``; ``baseline`` has layer NaN. Deltas are NaN until the baseline is done.
    Where samples carry a ``doc_id``, each delta has its paired standard error and 95% t
    interval (``delta_<metric>_stderr``, ``_ci_low``, ``_ci_high``; see ``depthprobe.uncertainty``).
    With ``samples=True`` every per-sample row is returned with its ``condition``.
    """
    records = _read_records(Path(run_dir))
    if samples:
        frames = [pd.DataFrame(r["samples"]).assign(condition=r["condition"]) for r in records if r["samples"]]
        if not frames:
            return pd.DataFrame(columns=["condition"])
        df = pd.concat(frames, ignore_index=True)
        return df[["condition"] + [c for c in df.columns if c != "condition"]]
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("metrics", "samples", "run_digest", "condition_digest")}
        row.update({k: (math.nan if v is None else v) for k, v in r["metrics"].items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["condition"])
    metric_names = sorted({k for r in records for k in r["metrics"]})
    base = df[df["condition"] == "baseline"]
    for name in metric_names:
        if name.endswith("_stderr") or "_stderr," in name:
            continue
        ref = float(base[name].iloc[0]) if len(base) else math.nan
        df[f"delta_{name}"] = df[name].astype(float) - ref
    add_delta_uncertainty(df, records, [n for n in metric_names if not (n.endswith("_stderr") or "_stderr," in n)])
    order = {c: i for i, c in enumerate(["baseline"])}
    df["_order"] = df["condition"].map(order).fillna(1)
    sort_cols = ["_order"] + [c for c in ("layer", "layer_max", "index", "condition") if c in df.columns]
    df = df.sort_values(sort_cols, kind="stable", na_position="first").drop(columns="_order")
    return df.reset_index(drop=True)
