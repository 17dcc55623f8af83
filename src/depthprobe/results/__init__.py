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

from depthprobe.results.manifest import (
    IDENTITY_KEYS,
    DamagedRunError,
    ManifestMismatchError,
    build_manifest,
    identity_digest,
)
from depthprobe.results.rundir import RunDir
from depthprobe.results.tables import load_results

__all__ = [
    "IDENTITY_KEYS",
    "DamagedRunError",
    "ManifestMismatchError",
    "RunDir",
    "build_manifest",
    "identity_digest",
    "load_results",
]
