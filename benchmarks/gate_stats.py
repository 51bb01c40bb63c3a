"""The regression gate's statistic: a case's slowdown, head against base, with a confidence interval and a verdict.

Input per side: one list of timed rounds (seconds) per pytest process, e.g. base = [[0.751, 0.750, 0.752],
[0.753, ...], ...]. A process median is the median of its rounds; a side's level is the median of its process
medians; the slowdown is head level / base level - 1 (of the time: +2 % time is -1.96 % tok/s).

The interval is a two-level (hierarchical) bootstrap, seeded, so the same timings always give the same verdict:
each resample draws the side's processes with replacement, then each drawn process' rounds with replacement,
and recomputes both levels and their ratio. The interval is the percentile interval of the resampled slowdowns.
It covers the variation between processes on one runner (what compiling, clocks and memory placement make of
each process) and between rounds within a process, as far as the k processes per side show them. It does not
cover runner-to-runner variation (both sides run on one runner) nor a process-level mode none of the k processes
landed in. With k processes per side the resampled levels cannot leave the range of the observed process
medians: at k = 3 the interval spans at most from the smallest to the largest head/base ratio of process medians,
and "every head process slower than every base process by more than the threshold" happens by chance with
probability 1/20 at a true slowdown exactly at the threshold (1/C(2k, k); 1/70 at k = 4, 1/252 at k = 5).

Verdicts against a minimum effect m (default 2 %): FAIL when the whole interval lies above m, INCONCLUSIVE when it
straddles m (not a pass), PASS when it lies at or below m.

Standard library only (random.Random with a string seed: the same stream on every platform and Python version).
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass
from typing import Sequence

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}  # 2 is taken by "no baseline" (benchmarks/report.py)
DEFAULT_MIN_EFFECT = 0.02
DEFAULT_CONFIDENCE = 0.99
DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class Comparison:
    """One case: slowdown = head level / base level - 1 (fractions), its interval, the verdict."""
    slowdown: float
    low: float
    high: float
    verdict: str
    base_s: float  # base level: median of the process medians (seconds)
    head_s: float
    base_processes: int
    head_processes: int
    base_rounds: int  # rounds over all processes
    head_rounds: int
    confidence: float
    min_effect: float


def verdict(low: float, high: float, min_effect: float = DEFAULT_MIN_EFFECT) -> str:
    if low > min_effect:
        return FAIL
    if high > min_effect:
        return INCONCLUSIVE
    return PASS


def worst(verdicts: Sequence[str]) -> str:
    """The gate's overall verdict: FAIL over INCONCLUSIVE over PASS (PASS when there is nothing to judge)."""
    for v in (FAIL, INCONCLUSIVE):
        if v in verdicts:
            return v
    return PASS


def _clean(processes: Sequence[Sequence[float]], side: str) -> list[list[float]]:
    out = [sorted(float(t) for t in p) for p in processes if len(p)]
    if not out:
        raise ValueError(f"{side}: no process has a timed round")
    bad = [t for p in out for t in p if not (t > 0 and math.isfinite(t))]
    if bad:
        raise ValueError(f"{side}: timings must be positive and finite, got {bad[:3]}")
    return out


def level(processes: Sequence[Sequence[float]]) -> float:
    """Median of the process medians."""
    return statistics.median(statistics.median(p) for p in processes)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _resampled_level(rng: random.Random, processes: list[list[float]]) -> float:
    k = len(processes)
    meds = []
    for _ in range(k):
        runs = processes[rng.randrange(k)]
        n = len(runs)
        if n == 1:
            meds.append(runs[0])
            continue
        draw = sorted(runs[int(rng.random() * n)] for _ in range(n))
        half = n // 2
        meds.append(draw[half] if n % 2 else (draw[half - 1] + draw[half]) / 2)
    return statistics.median(meds)


def bootstrap_slowdowns(base: Sequence[Sequence[float]], head: Sequence[Sequence[float]], *,
                        resamples: int = DEFAULT_RESAMPLES, seed: int | str = 0) -> list[float]:
    """The sorted resampled slowdowns (head level / base level - 1) of the two-level bootstrap."""
    b, h = _clean(base, "base"), _clean(head, "head")
    rng = random.Random(f"llama_fast-gate:{seed}")
    out = [_resampled_level(rng, h) / _resampled_level(rng, b) - 1 for _ in range(resamples)]
    out.sort()
    return out


def compare(base: Sequence[Sequence[float]], head: Sequence[Sequence[float]], *,
            min_effect: float = DEFAULT_MIN_EFFECT, confidence: float = DEFAULT_CONFIDENCE,
            resamples: int = DEFAULT_RESAMPLES, seed: int | str = 0) -> Comparison:
    """The gate's decision for one case. base / head: per process, its timed rounds in seconds."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    b, h = _clean(base, "base"), _clean(head, "head")
    lb, lh = level(b), level(h)
    boots = bootstrap_slowdowns(b, h, resamples=resamples, seed=seed)
    alpha = 1 - confidence
    low, high = _percentile(boots, alpha / 2), _percentile(boots, 1 - alpha / 2)
    return Comparison(slowdown=lh / lb - 1, low=low, high=high, verdict=verdict(low, high, min_effect),
                      base_s=lb, head_s=lh, base_processes=len(b), head_processes=len(h),
                      base_rounds=sum(map(len, b)), head_rounds=sum(map(len, h)), confidence=confidence,
                      min_effect=min_effect)


def add_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The statistic's command-line options (--min-effect, --confidence, --resamples, --seed), shared by
    gate.py and report.py --gate; prefix starts each help text (e.g. '--gate: ')."""
    p.add_argument("--min-effect", type=float, default=100 * DEFAULT_MIN_EFFECT, metavar="PCT",
                   help=f"{prefix}FAIL when a case's whole interval lies above +PCT%% (default %(default)g)")
    p.add_argument("--confidence", type=float, default=100 * DEFAULT_CONFIDENCE, metavar="PCT",
                   help=f"{prefix}the interval's confidence level (default %(default)g)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"{prefix}bootstrap resamples")
    p.add_argument("--seed", default="0", help=f"{prefix}bootstrap seed (the same timings and seed, the same verdict)")


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(own arguments, arguments after '--' handed on to each pytest process)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    k = argv.index("--")
    return argv[:k], argv[k + 1:]
