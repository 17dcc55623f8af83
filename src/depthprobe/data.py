"""Dataset loading: a local JSON Lines copy, or the Hugging Face hub id lm-eval uses.

A local data directory mirrors the hub datasets as ``<dataset>/<config>/<split>.jsonl``
(``<dataset>`` is the hub id's last component, lower-cased and without ``_``, e.g.
``allenai/openbookqa`` -> ``openbookqa/main/test.jsonl``; a dataset without configs uses
``default``). It is given by the ``data_dir=`` argument or the ``DEPTHPROBE_DATA_DIR``
environment variable and always wins over the hub, so runs are reproducible offline.
"""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR_ENV",
    "DataFormatError",
    "DatasetRef",
    "DatasetNotFoundError",
    "Record",
    "load_split",
    "record_source",
    "record_reads",
    "resolve_data_dir",
]

DATA_DIR_ENV = "DEPTHPROBE_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset split that is neither in the local data directory nor reachable on the hub."""


class DataFormatError(ValueError):
    """A data record that cannot be read: the message names the file, the line and the field."""


class Record(dict):  # type: ignore[type-arg]
    """A document read from a JSON Lines file: a plain ``dict`` that remembers ``source`` (``"path:line"``)."""

    source: str | None = None


def record_source(doc: Any) -> str | None:
    """``"path:line"`` of a document read from a local file, else None."""
    return getattr(doc, "source", None)


_RECORDERS: list[dict[str, str]] = []


@contextlib.contextmanager
def record_reads() -> Iterator[dict[str, str]]:
    """Collect what ``load_split`` reads inside the block: ``{name: content digest}``.

    Local files appear as ``<dataset>/<config>/<split>.jsonl`` (relative to the data
    directory, so a moved copy of the same data is the same data) with their SHA-256; hub
    splits as ``hub:<id>/<config>/<split>`` with the ``datasets`` fingerprint of the split.
    """
    reads: dict[str, str] = {}
    _RECORDERS.append(reads)
    try:
        yield reads
    finally:
        _RECORDERS.remove(reads)


def _note_read(name: str, digest: str) -> None:
    for reads in _RECORDERS:
        reads[name] = digest


@dataclass(frozen=True)
class DatasetRef:
    """Where a task's documents live: the hub id and configuration lm-eval uses."""

    hub_id: str
    config: str | None = None

    @property
    def local_name(self) -> str:
        """Directory name of this dataset inside a local data directory."""
        return self.hub_id.rsplit("/", 1)[-1].lower().replace("_", "")

    def local_path(self, data_dir: Path, split: str) -> Path:
        return data_dir / self.local_name / (self.config or "default") / f"{split}.jsonl"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The local data directory in effect: the argument, else ``$DEPTHPROBE_DATA_DIR``, else None."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"data directory {str(path)!r} does not exist")
    return path


@lru_cache(maxsize=16)
def _read_jsonl_cached(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[int, dict[str, Any]], ...]]:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"{path}:{number}: not a valid JSON record ({err.msg} at column {err.colno}); "
                f"each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}:{number}: a record must be a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return hashlib.sha256(raw).hexdigest(), tuple(records)


def _read_jsonl(path: Path) -> tuple[str, list]:
    """The file's SHA-256 and records; parsed once per file version, since a sweep evaluates the same split many times."""
    st = path.stat()
    digest, records = _read_jsonl_cached(str(path), st.st_mtime_ns, st.st_size)
    out = []
    for number, d in records:
        record = Record(d)
        record.source = f"{path}:{number}"
        out.append(record)
    return digest, out


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "0").lower() in {"1", "true", "yes"} for f in flags)


def load_split(ref: DatasetRef, split: str, data_dir: str | os.PathLike[str] | None = None) -> list:
    """All documents of one split, as plain dicts in file order.

    The local copy is used when a data directory is in effect and holds the split;
    otherwise the hub through ``datasets``. Raises ``DatasetNotFoundError`` (one line,
    naming the dataset and how to supply it) when neither is available.
    """
    local = resolve_data_dir(data_dir)
    if local is not None:
        path = ref.local_path(local, split)
        if path.is_file():
            digest, records = _read_jsonl(path)
            _note_read(str(path.relative_to(local)), digest)
            return records
    where = f"{ref.hub_id}" + (f" (config {ref.config!r})" if ref.config else "")
    how = (
        f"put a JSON Lines copy at <data_dir>/{ref.local_name}/{ref.config or 'default'}/{split}.jsonl "
        f"and pass data_dir= or set ${DATA_DIR_ENV}"
    )
    if _hub_offline():
        looked = f" (looked in {local})" if local is not None else ""
        raise DatasetNotFoundError(
            f"dataset {where} split {split!r} has no local copy{looked} and the hub is offline; {how}"
        )
    try:
        import datasets

        ds = datasets.load_dataset(ref.hub_id, ref.config, split=split)
    except Exception as err:  # network, missing split, gated dataset: all one message
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetNotFoundError(
            f"could not load dataset {where} split {split!r} from the hub ({first}); {how}"
        ) from None
    _note_read(f"hub:{ref.hub_id}/{ref.config or 'default'}/{split}", str(getattr(ds, "_fingerprint", None)))
    return [dict(row) for row in ds]
