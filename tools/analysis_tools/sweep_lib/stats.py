"""Aggregating the sweep: mean and spread per cell, paired differences with 95% intervals."""
import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from scipy import stats as scipy_stats


def _by_cell(records: Sequence[dict], metric: str) -> Dict[Tuple[str, str], Dict[int, float]]:
    values: Dict[Tuple[str, str], Dict[int, float]] = defaultdict(dict)
    for record in records:
        if record.get('error') is None and record.get(metric) is not None:
            values[(record['method'], record['pattern'])][record['seed']] = float(record[metric])
    return values


def mean_interval(values: Sequence[float], confidence: float = 0.95
                  ) -> Tuple[float, Optional[float], Optional[float], Optional[float]]:
    """``(mean, sample std, ci_low, ci_high)``: Student-t interval of the mean (no spread and no
    interval from a single value: ``None``, not a zero that reads as a measured spread)."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, None, None, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = scipy_stats.t.ppf(0.5 + confidence / 2, k - 1) * std / math.sqrt(k)
    return mean, std, mean - half, mean + half


def summarize(records: Sequence[dict], metric: str) -> List[dict]:
    """One row per (method, pattern): mean, sample std, 95% interval and the seeds."""
    rows = []
    for (method, pattern), by_seed in sorted(_by_cell(records, metric).items()):
        seeds = sorted(by_seed)
        mean, std, low, high = mean_interval([by_seed[s] for s in seeds])
        rows.append(dict(method=method, pattern=pattern, mean=mean, std=std, ci_low=low,
                         ci_high=high, seeds=seeds, values=[by_seed[s] for s in seeds]))
    return rows


def paired_difference(records: Sequence[dict], metric: str, a: str, b: str,
                      pattern: str) -> Optional[dict]:
    """``a - b`` at ``pattern``, paired by seed (same initial weights, data order and
    schedule), with its 95% Student-t interval; ``None`` without a common seed."""
    values = _by_cell(records, metric)
    first, second = values.get((a, pattern), {}), values.get((b, pattern), {})
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return None
    diffs = [first[s] - second[s] for s in seeds]
    mean, std, low, high = mean_interval(diffs)
    excludes_zero = low is not None and (low > 0 or high < 0)
    return dict(a=a, b=b, pattern=pattern, mean=mean, std=std, ci_low=low, ci_high=high,
                seeds=seeds, diffs=diffs, excludes_zero=excludes_zero)
