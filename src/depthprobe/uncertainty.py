"""Paired uncertainty of every delta: standard error and 95% interval from per-document differences.

A condition and the baseline are evaluated on the same documents, so the delta of a metric is
the mean of per-document differences ``d_i = x_i(condition) - x_i(baseline)``, paired by
``doc_id``. Its standard error is ``sd(d) / sqrt(n)`` (sample standard deviation, ``n - 1``),
and its interval is the two-sided Student t interval ``mean(d) +- t_{0.975, n-1} * se``: the
paired t-test. A delta is *distinguishable from zero at 95%* when that interval excludes 0.
Pairing removes the between-document variance both runs share, so paired errors are much
smaller than the two runs' own standard errors combined.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LEVEL", "SAMPLE_COLUMNS", "paired_delta_stats", "sample_column", "significant", "t_quantile"]

#: Confidence level of every interval depthprobe reports.
LEVEL = 0.95
#: Per-document column of each aggregated metric whose name differs from the column's.
SAMPLE_COLUMNS = {"acc": "correct", "acc_norm": "correct_norm", "acc_token_norm": "correct_token_norm"}
_SUFFIXES = ("_stderr", "_ci_low", "_ci_high")


def sample_column(metric: str, columns: Iterable[str]) -> str | None:
    """The per-document column holding ``metric`` (``acc`` -> ``correct``; ``exact_match,f`` -> itself), or None."""
    columns = set(columns)
    for name in (SAMPLE_COLUMNS.get(metric), metric):
        if name is not None and name in columns:
            return name
    return None


def t_quantile(level: float, dof: int) -> float:
    """The two-sided Student t critical value for ``level`` with ``dof`` degrees of freedom."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof!r}")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def paired_delta_stats(
    samples: pd.DataFrame,
    metrics: Sequence[str],
    *,
    baseline: str = "baseline",
    key: str = "doc_id",
    level: float = LEVEL,
) -> pd.DataFrame:
    """Paired standard error and interval of ``delta_<metric>`` for every condition of ``samples``.

    ``samples`` is long-format per-document rows with ``condition`` and ``key`` columns (as
    ``load_results(run_dir, samples=True)`` returns). Returns one row per condition (index)
    with ``delta_<m>_stderr``, ``delta_<m>_ci_low`` and ``delta_<m>_ci_high`` for each metric
    that has a per-document column; documents are paired by ``key`` (only those present in
    both runs count); fewer than two pairs give NaN. Empty when pairing is impossible (no
    ``key`` column or no baseline).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if samples.empty or key not in samples.columns or "condition" not in samples.columns:
        return pd.DataFrame()
    if not (samples["condition"] == baseline).any():
        return pd.DataFrame()
    repeated = samples.duplicated(["condition", key])
    if repeated.any():
        cond = samples.loc[repeated, "condition"].iloc[0]
        raise ValueError(f"condition {cond!r} repeats {key} values; each document must appear once to be paired")
    from scipy.stats import t

    columns: dict[str, pd.Series] = {}
    for metric in metrics:
        col = sample_column(metric, samples.columns)
        if col is None:
            continue
        wide = samples.pivot(index=key, columns="condition", values=col).astype(float)
        diffs = wide.sub(wide[baseline], axis=0)  # NaN where a document is missing from either run
        n = diffs.notna().sum()
        mean = diffs.mean()
        se = (diffs.std(ddof=1) / np.sqrt(n)).where(n >= 2)
        half = pd.Series(t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), index=n.index).where(n >= 2) * se
        columns[f"delta_{metric}_stderr"] = se
        columns[f"delta_{metric}_ci_low"] = mean - half
        columns[f"delta_{metric}_ci_high"] = mean + half
    out = pd.DataFrame(columns)
    out.index = out.index.astype(str)
    return out


def significant(df: pd.DataFrame, metric: str) -> pd.Series:
    """Whether each row's ``delta_<metric>`` is distinguishable from zero at 95% (its paired t interval excludes 0)."""
    low, high = f"delta_{metric}_ci_low", f"delta_{metric}_ci_high"
    missing = [c for c in (low, high) if c not in df.columns]
    if missing:
        raise ValueError(
            f"no interval for {metric!r}: missing column(s) {', '.join(missing)}; "
            f"intervals need per-document samples with a doc_id"
        )
    return (df[low] > 0) | (df[high] < 0)


def _slim_samples(records: Sequence[Mapping[str, Any]], metrics: Sequence[str], key: str = "doc_id") -> pd.DataFrame:
    """Only the columns pairing needs, straight from run-directory records (skips prompts and texts)."""
    rows = []
    for r in records:
        for s in r.get("samples") or ():
            if key not in s:
                continue
            row = {"condition": r["condition"], key: s[key]}
            for m in metrics:
                col = sample_column(m, s.keys())
                if col is not None:
                    row[col] = s[col]
            rows.append(row)
    return pd.DataFrame(rows)


def add_delta_uncertainty(
    df: pd.DataFrame, records: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> pd.DataFrame:
    """``df`` (one row per condition) with the paired stderr and interval columns of ``metrics`` added where computable."""
    stats = paired_delta_stats(_slim_samples(records, metrics), metrics)
    for col in stats.columns:
        df[col] = df["condition"].map(stats[col]).astype(float)
    return df
