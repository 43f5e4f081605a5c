"""Interleaved timing for noisy machines: ratios from measurements taken side by side."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved(
    functions: Mapping[str, Callable[[], Any]], repeats: int, number: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, `repeats` samples each, taken in turns.

    Each sample times `number` calls. The order alternates from one round to
    the next, so a slow spell of the machine hits every function alike.
    """
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeats):
            for name in names if round_ % 2 == 0 else reversed(names):
                function = functions[name]
                start = time.perf_counter()
                for _ in range(number):
                    function()
                samples[name].append((time.perf_counter() - start) / number)
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    return samples


def paired_ratio(samples: dict[str, list[float]], over: str, under: str) -> float:
    """The median of round-by-round ratios `over / under`: robust to drifting load."""
    return statistics.median(a / b for a, b in zip(samples[over], samples[under]))


def paired_difference(samples: dict[str, list[float]], over: str, under: str) -> float:
    """The median of round-by-round differences `over - under`, in seconds."""
    return statistics.median(a - b for a, b in zip(samples[over], samples[under]))


def summary(seconds: list[float]) -> dict[str, float]:
    """Min and median of samples, in microseconds."""
    return {"min_us": min(seconds) * 1e6, "median_us": statistics.median(seconds) * 1e6}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares `(slope, intercept)` of `ys` over `xs`."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return slope, mean_y - slope * mean_x
