"""The report of ``benchmarks/device_check.py``: records with ``passed`` and figures, written as JSON and Markdown
after each check, a time budget, and the run's metadata (device, versions, whether depthprobe is the checkout's)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

START = time.perf_counter()  # imported first thing by device_check.py: about the process's start
REPO = Path(__file__).resolve().parents[1]
PARTS = ("correctness", "throughput", "projections")
GIB = 2**30


class Report:
    """The records so far, written as JSON and Markdown after each one (atomically)."""

    def __init__(self, out: Path, meta: dict[str, Any], budget_s: float) -> None:
        self.out, self.meta, self.records = out, meta, []
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.install_s = float(meta.get("install_s") or 0.0)
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds of the budget left, counted from the command's start (the wheelhouse install included)."""
        return self.budget_s - (time.perf_counter() - START) - self.install_s

    def add(self, part: str, name: str, figures: dict[str, Any], seconds: float) -> dict[str, Any]:
        figures = dict(figures)
        passed = figures.pop("passed", None)
        status = figures.pop("status", None) or ("passed" if passed else "failed")
        rec = {
            "part": part,
            "name": name,
            "status": status,
            "passed": passed,
            "seconds": round(seconds, 2),
            "figures": figures,
        }
        self.records.append(rec)
        brief = ", ".join(f"{k}={_short(v)}" for k, v in figures.items() if _scalar(v) and k != "assumptions")[:160]
        print(f"[{part}] {name}: {status} ({seconds:.1f} s) {brief}", flush=True)
        self.write()
        return rec

    def check(self, part: str, name: str, fn: Callable[[], dict[str, Any]], *, needs_s: float = 5.0) -> dict | None:
        """Run one check unless the budget is spent; an exception is a failed record with its message."""
        if self.left() < needs_s:
            self.add(part, name, {"status": "skipped", "note": f"budget: {self.left():.0f} s left"}, 0.0)
            return None
        start = time.perf_counter()
        try:
            figures = fn()
        except Exception as err:  # noqa: BLE001 - any failure is a result to report, and the next check runs
            figures = {
                "status": "error",
                "passed": False,
                "error": f"{type(err).__name__}: {str(err)[:500]}",
                "traceback": traceback.format_exc().splitlines()[-6:],
            }
            _free()
        return self.add(part, name, figures, time.perf_counter() - start)

    def write(self) -> None:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self.meta["wall_s"] = round(time.perf_counter() - self.start, 1)
        self.meta["process_wall_s"] = round(time.perf_counter() - START, 1)
        doc = {"meta": self.meta, "summary": counts, "records": self.records}
        _atomic(self.out / "device_check.json", json.dumps(doc, indent=1, default=str))
        _atomic(self.out / "device_check.md", markdown(doc))


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _free() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def markdown(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [
        f"# Device check: {m.get('device_name')} ({m.get('shapes')})",
        "",
        f"{m.get('date')}; torch {m.get('versions', {}).get('torch')}, wall {m.get('wall_s')} s; "
        f"summary: {', '.join(f'{k} {v}' for k, v in doc['summary'].items())}",
        "",
    ]
    for part in PARTS:
        recs = [r for r in doc["records"] if r["part"] == part]
        if not recs:
            continue
        lines += [f"## {part}", "", "| check | status | s | figures |", "| --- | --- | --- | --- |"]
        for r in recs:
            figs = "; ".join(f"{k} {_short(v)}" for k, v in r["figures"].items() if _scalar(v) and k != "assumptions")
            lines.append(f"| {r['name']} | {r['status']} | {r['seconds']} | {figs.replace('|', '/')} |")
        notes = [f"- {r['name']}: {r['figures']['assumptions']}" for r in recs if "assumptions" in r["figures"]]
        lines += [""] + (["Assumptions:", ""] + notes + [""] if notes else [])
    return "\n".join(lines) + "\n"


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    import depthprobe

    versions = {}
    for dist in ("torch", "transformers", "transformer-lens", "datasets", "accelerate", "huggingface-hub", "ray"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    cuda = args.device.startswith("cuda")
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args),
        "device_name": props.name if props else f"CPU ({os.cpu_count()} cores)",
        "device_memory_gib": round(props.total_memory / GIB, 1) if props else None,
        "shapes": "tiny" if args.tiny else "Llama-3.1-8B / Qwen3-8B",
        "python": sys.version.split()[0],
        "versions": versions,
        "depthprobe_file": depthprobe.__file__,
        "depthprobe_matches_src": _same_source(),
        "install_s": float(os.environ.get("DEVICE_CHECK_INSTALL_S", 0) or 0),
    }


def _same_source() -> bool | None:
    """Whether the depthprobe imported (the wheel, on the device) has the checkout's src/ code (None: no src/)."""
    import hashlib

    import depthprobe

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
        return h.hexdigest()

    src = REPO / "src" / "depthprobe"
    return digest(Path(depthprobe.__file__).parent) == digest(src) if src.is_dir() else None
