"""Test-only slowdown injection (--bench-inject-slowdown F): a delay after every decode step, sized so that a whole
llama_fast call (prefill included) takes (1 + F) times as long. It proves that the regression gate fires, and how
often, at a known slowdown.

On CUDA the delay is a `torch.cuda._sleep(cycles)` kernel (it spins on the GPU for that many clock cycles) that
LlamaFast.step_hook enqueues on the current stream after each decode step: the host never waits, so the delay
lands inside the step's stream of work, where a real regression would, and adds its duration to a device-bound
call. On CPU the hook sleeps the host thread (`time.sleep`): the CPU runs each step before the hook returns, so the
sleep adds its duration, give or take the OS timer's wake-up latency. In both cases the size is calibrated, then
checked:

1. the sleep's rate: `units = rate * (seconds - overhead)`, a line through timed sleeps of two sizes (CUDA events
   on the GPU: units are GPU clock cycles; host clock on CPU: units are nanoseconds);
2. the un-injected call time T0 (median of a few calls), so each of the N decode steps gets F * T0 / N;
3. verification: timed injected calls; while the measured slowdown misses F by more than the tolerance, the units
   are corrected by a secant step over the measurements (a device that hides part of the sleep behind host
   gaps, or a clock that runs slower under load, shows up here) - at most a few rounds.

The pure parts (fit_sleep_rate, initial_units, next_units, calibrate) are tested on CPU with synthetic numbers in
tests/test_gate_stats.py.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

TOLERANCE = 0.001  # stop correcting once the measured slowdown is within 0.1 point of the requested one
MAX_CORRECTIONS = 3


@dataclass(frozen=True)
class SleepRate:
    per_s: float  # sleep units per second of delay (GPU clock cycles / host nanoseconds)
    overhead_s: float  # fixed cost of one sleep beyond its units (launch gap, OS wake-up)


def fit_sleep_rate(samples: list[tuple[int, float]]) -> SleepRate:
    """Least-squares line seconds = overhead + units / rate over (units, seconds) samples of at least two sizes."""
    if len({u for u, _ in samples}) < 2:
        raise ValueError("fit_sleep_rate needs timed sleeps of at least two sizes")
    n = len(samples)
    mu = sum(u for u, _ in samples) / n
    ms = sum(s for _, s in samples) / n
    cov = sum((u - mu) * (s - ms) for u, s in samples)
    var = sum((u - mu) ** 2 for u, _ in samples)
    slope = cov / var  # seconds per unit
    if not slope > 0:
        raise ValueError(f"timed sleeps do not grow with their size: {samples}")
    return SleepRate(per_s=1 / slope, overhead_s=max(0.0, ms - slope * mu))


def initial_units(fraction: float, call_s: float, steps: int, rate: SleepRate) -> int:
    """Units per step so that `steps` sleeps add fraction * call_s in total (the rate's estimate, before checking)."""
    if fraction < 0 or steps < 1 or not call_s > 0:
        raise ValueError(f"need fraction >= 0, steps >= 1 and a positive call time (got {fraction}, {steps}, {call_s})")
    per_step = fraction * call_s / steps
    return max(0, round((per_step - rate.overhead_s) * rate.per_s))


def next_units(history: list[tuple[int, float]], wanted_per_step_s: float, rate: SleepRate) -> int:
    """The next units to try: a secant step through the last two (units, measured extra seconds per step) points,
    or the rate's slope while there is one point (or the points give no positive slope). Never negative, and at
    most 4x the largest units tried so far (a measurement that saw almost no delay must not blow it up)."""
    u1, e1 = history[-1]
    slope = 1 / rate.per_s
    if len(history) >= 2:
        u0, e0 = history[-2]
        if u1 != u0 and (e1 - e0) / (u1 - u0) > 0:
            slope = (e1 - e0) / (u1 - u0)
    cap = 4 * max(max(u for u, _ in history), 1)
    return int(min(cap, max(0, round(u1 + (wanted_per_step_s - e1) / slope))))


@dataclass(frozen=True)
class Calibration:
    fraction: float  # requested
    units: int  # per decode step, as installed
    measured: float  # the installed units' measured slowdown: injected call / un-injected call - 1
    call_s: float  # the un-injected call time T0
    steps: int
    rate: SleepRate
    tried: tuple[tuple[int, float], ...]  # every (units, measured slowdown), in order


def calibrate(fraction: float, call_s: float, steps: int, rate: SleepRate, measure: Callable[[int], float], *,
              tolerance: float = TOLERANCE, max_corrections: int = MAX_CORRECTIONS) -> Calibration:
    """Size the per-step sleep: measure(units) -> seconds of an injected call with that sleep after every step.
    Stops at the first measurement within `tolerance` of `fraction`, or after max_corrections corrections, and
    installs the units whose measured slowdown came closest."""
    wanted = fraction * call_s / steps
    units = initial_units(fraction, call_s, steps, rate)
    history: list[tuple[int, float]] = []
    tried: list[tuple[int, float]] = []
    for attempt in range(max_corrections + 1):
        seconds = measure(units)
        measured = seconds / call_s - 1
        history.append((units, (seconds - call_s) / steps))
        tried.append((units, measured))
        if abs(measured - fraction) <= tolerance or attempt == max_corrections:
            break
        units = next_units(history, wanted, rate)
    units, measured = min(tried, key=lambda um: abs(um[1] - fraction))
    return Calibration(fraction, units, measured, call_s, steps, rate, tuple(tried))


# ------------------------------------------------------------------------------------------- sleepers
class DeviceSleep:
    """GPU clock cycles spun by torch.cuda._sleep on the current stream: no host wait."""
    kind = "device sleep (torch.cuda._sleep after each decode step)"
    sizes = (1_000_000, 20_000_000)  # ~0.5 ms and ~10 ms at 2 GHz: the overhead and the slope both show

    def __init__(self, device):
        self.device = device

    def measure_rate(self, reps: int = 3) -> SleepRate:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda._sleep(self.sizes[0])  # loads the kernel before anything is timed
        samples = []
        for _ in range(reps):
            for units in self.sizes:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.cuda._sleep(units)
                end.record()
                end.synchronize()
                samples.append((units, start.elapsed_time(end) / 1e3))
        return fit_sleep_rate(samples)

    @staticmethod
    def hook(units: int) -> Callable[[], None]:
        import torch

        def sleep():
            torch.cuda._sleep(units)

        return sleep


class HostSleep:
    """Nanoseconds slept by the host thread: on CPU the step has finished when the hook runs."""
    kind = "host sleep (time.sleep after each decode step; CPU device)"
    sizes = (1_000_000, 5_000_000)  # 1 ms and 5 ms

    def __init__(self, device=None):
        self.device = device

    def measure_rate(self, reps: int = 3) -> SleepRate:
        samples = []
        for _ in range(reps):
            for units in self.sizes:
                t0 = time.perf_counter()
                time.sleep(units * 1e-9)
                samples.append((units, time.perf_counter() - t0))
        return fit_sleep_rate(samples)

    @staticmethod
    def hook(units: int) -> Callable[[], None]:
        seconds = units * 1e-9

        def sleep():
            time.sleep(seconds)

        return sleep


def sleeper(device):
    return DeviceSleep(device) if getattr(device, "type", str(device)) == "cuda" else HostSleep(device)


def install(fast, call: Callable[[], object], fraction: float, steps: int, device, *, calls: int = 3,
            verify_calls: int = 2) -> tuple[Calibration, str]:
    """Calibrate and leave fast.step_hook set so that `call` (one synchronized generate) takes (1 + fraction)x as
    long. Returns (calibration, the sleep's kind). The caller clears fast.step_hook afterwards."""
    from llama_fast.harness import DeviceTimer

    def timed(n: int) -> float:
        ts = []
        for _ in range(n):
            with DeviceTimer(device) as t:
                call()
            ts.append(t.seconds)
        return statistics.median(ts)

    s = sleeper(device)
    fast.step_hook = None
    call_s = timed(calls)
    rate = s.measure_rate()

    def measure(units: int) -> float:
        fast.step_hook = s.hook(units) if units > 0 else None
        return timed(verify_calls)

    cal = calibrate(fraction, call_s, steps, rate, measure)
    fast.step_hook = s.hook(cal.units) if cal.units > 0 else None
    return cal, s.kind
