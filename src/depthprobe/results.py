"""Run directories: a manifest plus one atomically written result file per condition.

Layout::

    run_dir/manifest.json              what was run (model, dtype, device, task, protocol,
                                       shots, seed, limit, package versions, toolkit commit)
    run_dir/conditions/<name>.json     one finished condition: metrics, ids, per-sample rows

A condition file appears only complete (temporary file, fsync, ``os.replace``), so a killed
sweep loses at most the condition in flight, and re-running the same command skips every
condition already on disk. A run directory whose manifest disagrees with the command on
anything that changes the numbers is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

__all__ = [
    "IDENTITY_KEYS",
    "ManifestMismatchError",
    "RunDir",
    "build_manifest",
    "weights_fingerprint",
    "load_results",
]

MANIFEST = "manifest.json"
CONDITIONS = "conditions"
#: Manifest fields that must agree for a run directory to be resumed.
IDENTITY_KEYS = ("model", "revision", "dtype", "device", "task", "task_options", "protocol", "num_fewshot",
                 "seed", "limit", "max_gen_toks")
_PACKAGES = ("depthprobe", "torch", "transformers", "transformer-lens", "pandas", "lm_eval")


class ManifestMismatchError(ValueError):
    """A run directory made by a different command (other model, task or settings)."""


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


def weights_fingerprint(path: str | os.PathLike[str], sample: int = 1 << 16) -> str | None:
    """A cheap content fingerprint of a local checkpoint directory's weight files, or None if it has none.

    Hashes each ``*.safetensors``/``*.bin`` file's name, size and three ``sample``-byte windows
    (start, middle, end), so retrained weights in the same directory change it while an 8B
    checkpoint is fingerprinted in milliseconds. It is the revision of a local model: a run
    directory made with other weights is refused instead of silently resumed.
    """
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in Path(path).glob(pattern))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            for offset in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
                f.seek(offset)
                digest.update(f.read(sample))
    return "local-" + digest.hexdigest()[:16]


def _model_identity(model: Any) -> tuple[str, str | None, str, str]:
    hf = getattr(model, "original_model", model)
    config = getattr(hf, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(getattr(model, "cfg", None), "model_name", None)
    revision = getattr(config, "_commit_hash", None)
    if revision is None and name and Path(str(name)).is_dir():
        revision = weights_fingerprint(str(name))
    param = next(model.parameters())
    return str(name), revision, str(param.dtype).replace("torch.", ""), param.device.type


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
    **extra: Any,
) -> dict[str, Any]:
    """What a sweep command runs, for ``RunDir``: identity fields plus provenance (versions, commit)."""
    name, revision, dtype, device = _model_identity(model)
    manifest: dict[str, Any] = {
        "model": name, "revision": revision, "dtype": dtype, "device": device,
        "task": task, "task_options": dict(sorted((task_options or {}).items())), "protocol": protocol,
        "num_fewshot": num_fewshot, "seed": seed, "limit": limit, "max_gen_toks": max_gen_toks,
    }
    manifest.update(extra)
    manifest["versions"] = _versions()
    manifest["git_commit"] = _git_commit()
    return json.loads(json.dumps(manifest, default=str))  # exactly what a reload will see


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


class RunDir:
    """A run directory bound to one manifest; creates it, or checks an existing one agrees."""

    def __init__(self, path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = dict(manifest)
        file = self.path / MANIFEST
        if file.is_file():
            old = json.loads(file.read_text(encoding="utf-8"))
            for key in IDENTITY_KEYS:
                if old.get(key) != self.manifest.get(key):
                    raise ManifestMismatchError(
                        f"{self.path} holds a run with {key}={old.get(key)!r}, but this command has "
                        f"{key}={self.manifest.get(key)!r}; use another output directory to keep both"
                    )
            self.manifest = old
        else:
            (self.path / CONDITIONS).mkdir(parents=True, exist_ok=True)
            _write_atomic(file, json.dumps(self.manifest, indent=2, sort_keys=True))
        (self.path / CONDITIONS).mkdir(parents=True, exist_ok=True)

    def condition_path(self, condition: str) -> Path:
        return self.path / CONDITIONS / _file_name(condition)

    def done(self, condition: str) -> bool:
        """Whether ``condition`` has a complete result file."""
        return self.condition_path(condition).is_file()

    def write(self, condition: str, metrics: Mapping[str, float], samples: pd.DataFrame | None = None,
              **info: Any) -> Path:
        """Store one finished condition atomically (``info``: layer, kind, wall time, ...)."""
        record = {
            "condition": condition,
            **info,
            "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
            "samples": [] if samples is None else json.loads(samples.to_json(orient="records")),
        }
        path = self.condition_path(condition)
        _write_atomic(path, json.dumps(record, default=str))
        return path


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    cond_dir = run_dir / CONDITIONS
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {MANIFEST})")
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(cond_dir.glob("[!.]*.json"))]


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
        row = {k: v for k, v in r.items() if k not in ("metrics", "samples")}
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
    from depthprobe.uncertainty import add_delta_uncertainty

    add_delta_uncertainty(df, records, [n for n in metric_names if not (n.endswith("_stderr") or "_stderr," in n)])
    order = {c: i for i, c in enumerate(["baseline"])}
    df["_order"] = df["condition"].map(order).fillna(1)
    sort_cols = ["_order"] + [c for c in ("layer", "layer_max", "index", "condition") if c in df.columns]
    df = df.sort_values(sort_cols, kind="stable", na_position="first").drop(columns="_order")
    return df.reset_index(drop=True)
