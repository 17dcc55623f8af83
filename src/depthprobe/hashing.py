"""Content hashes of files (model weights, data), computed once per file version and cached.

A full SHA-256 of an 8B checkpoint takes tens of seconds, so each file's digest is stored in a
small JSON cache keyed by the file's resolved path, size, mtime and ctime (``ctime`` cannot be
set back by a program, so an in-place edit that restores the mtime still misses the cache).
The cache lives in ``$DEPTHPROBE_CACHE_DIR`` (default ``~/.cache/depthprobe``); a cache that
cannot be read or written only costs the hashing again, never a wrong digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock

__all__ = ["CACHE_DIR_ENV", "cache_dir", "file_sha256", "weights_digest"]

CACHE_DIR_ENV = "DEPTHPROBE_CACHE_DIR"
_CACHE_FILE = "file-sha256.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def cache_dir() -> Path:
    """Where the digest cache lives: ``$DEPTHPROBE_CACHE_DIR``, else ``~/.cache/depthprobe``."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "depthprobe"


def _key(path: Path) -> tuple[str, str]:
    st = path.stat()
    return str(path), f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load_cache(file: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's whole content, from the cache when the file is unchanged since it was hashed."""
    resolved = Path(path).resolve()
    name, stamp = _key(resolved)
    folder = cache_dir()
    cache_file = folder / _CACHE_FILE
    entry = _load_cache(cache_file).get(name)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = _sha256(resolved)
    if _key(resolved)[1] != stamp:  # changed while being read: do not cache a torn digest
        return file_sha256(resolved)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f"{_CACHE_FILE}.lock"), timeout=30):
            cache = _load_cache(cache_file)
            cache[name] = {"stamp": stamp, "sha256": digest}
            tmp = cache_file.with_name(f".{_CACHE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=0, sort_keys=True), encoding="utf-8")
            os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return digest


def weights_digest(directory: str | os.PathLike[str]) -> dict[str, str] | None:
    """``{file name: sha256}`` of a checkpoint directory's weight files, or None when it has none."""
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in Path(directory).glob(pattern) if p.is_file()})
    if not files:
        return None
    return {p.name: file_sha256(p) for p in files}
