"""Content hashes of files (model weights, data) and of tensors in memory (a model's live parameters).

A full SHA-256 of an 8B checkpoint takes tens of seconds, so each file's digest is stored in a
small JSON cache keyed by the file's resolved path, size, mtime and ctime (``ctime`` cannot be
set back by a program, so an in-place edit that restores the mtime still misses the cache).
The cache lives in ``$DEPTHPROBE_CACHE_DIR`` (default ``~/.cache/depthprobe``); a cache that
cannot be read or written only costs the hashing again, never a wrong digest.

:func:`parameters_fingerprint` hashes the parameters of a model in memory, on their own device,
exactly: the same bits give the same fingerprint on every device and CPU kernel set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from filelock import FileLock

__all__ = ["CACHE_DIR_ENV", "cache_dir", "file_sha256", "parameters_fingerprint", "weights_digest"]

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


# --- live parameters --------------------------------------------------------------------------------

#: Words per row of the projection. |word * multiplier| < 2**31 * 2**15 = 2**46, so a row's sum stays below
#: 2**62: exact in int64.
_ROW = 1 << 16
#: Words per step: bounds the temporaries on the device (a few hundred MiB).
_STEP = 1 << 26
#: Word (what one multiplier weighs) and product dtypes by element size: one word per value up to 4 bytes.
_WORDS = {
    1: (torch.uint8, torch.int32),
    2: (torch.int16, torch.int32),
    4: (torch.int32, torch.int64),
    8: (torch.int32, torch.int64),
}
_MULTIPLIERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _multipliers(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed pseudo-random odd multiplier in [1, 2**15) per position of a row, computed on ``device``.

    Integer arithmetic only, every intermediate below 2**63, so every device computes the same vector.
    """
    if (device, dtype) not in _MULTIPLIERS:
        h = (torch.arange(_ROW, dtype=torch.int64, device=device) * 0x5BD1E995 + 0x2545F491) & 0x7FFFFFFF
        h ^= h >> 15
        h = (h * 0x2C1B3C6D) & 0x7FFFFFFF
        h ^= h >> 13
        _MULTIPLIERS[device, dtype] = ((h & 0x7FFF) | 1).to(dtype)
    return _MULTIPLIERS[device, dtype]


def _projection(tensor: torch.Tensor) -> bytes:
    """Per row of ``_ROW`` words of ``tensor``'s bytes, the exact sum of word * multiplier (little-endian int64s)."""
    flat = tensor.detach().reshape(-1)
    word, product = _WORDS[flat.element_size()]
    words = flat.view(word)
    mult = _multipliers(words.device, product)
    n_rows, sums = words.numel() // _ROW, []
    step = max(1, _STEP // _ROW)
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        block = words[start * _ROW : stop * _ROW].view(stop - start, _ROW).to(product)
        sums.append(block.mul_(mult).sum(dim=1, dtype=torch.int64))
    tail = words[n_rows * _ROW :]
    if tail.numel() or not sums:
        sums.append((tail.to(product) * mult[: tail.numel()]).sum(dtype=torch.int64).reshape(1))
    return torch.cat(sums).cpu().numpy().astype("<i8").tobytes()


def parameters_fingerprint(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A fingerprint of tensors in memory (``model.named_parameters()``), computed on their own device.

    Each tensor's values, as integer words of their bits (one word per value of up to 4 bytes),
    are projected on a fixed pseudo-random vector of odd integers in exact integer arithmetic
    (one int64 sum per 2**16 words); names, dtypes, shapes and the sums, in order, are hashed
    with SHA-256. Integer sums do not depend on the order of summation, so the fingerprint is the
    same on every device and CPU kernel set (float32 sums differ between kernel sets by a few
    ulps); odd multipliers make a change of any single value always change it. Cost: one pass
    over the weights at memory speed.
    """
    digest = hashlib.sha256(b"depthprobe-parameters-v1")
    for name, tensor in named_parameters:
        digest.update(f"{name}|{str(tensor.dtype).replace('torch.', '')}|{tuple(tensor.shape)}\n".encode())
        if tensor.is_meta:  # not in memory (offloaded): only its name, dtype and shape are known
            continue
        digest.update(_projection(tensor))
    return "live-" + digest.hexdigest()[:32]
