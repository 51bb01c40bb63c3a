#!/usr/bin/env python3
"""Measure the regression gate on a GPU: false alarms, detection, injection accuracy, suite time (docs/BENCHMARKS.md,
"GPU measurements"). One command, everything written under --out:

  python benchmarks/gate_eval.py --out gate-eval                  # stages eval + suite (about 8-9 min on one H200)
  python benchmarks/gate_eval.py --out gate-eval --stages eval    # about 5 min
  python benchmarks/gate_eval.py --out gate-eval --stages suite   # about 3-4 min; run it twice for warm caches
  python benchmarks/gate_eval.py --out gate-eval --stages gate    # one real gate run, unchanged code (~8 min)

Stage `eval`: --processes worker processes (default 6), one after another. Each loads the model once, compiles the
fastest path on the seed workload (the case the gate's targets are set on), then measures every injection level
(default 0, 1, 2, 3, 5, 10 %) in the same process: the un-injected call time, the calibration of each level
(benchmarks/inject.py), then --rounds rounds of every level, the levels' order rotated from round to round and from
process to process (interleaved: a drift within the process touches every level alike). Comparisons are then
formed offline, exactly as the gate forms one: a base side of --per-side processes (default 3) at level 0 against
a head side of --per-side *other* processes at level L, judged by benchmarks/gate_stats.py (99 %, minimum effect
2 %). With 6 processes there are 20 such ordered splits; each split gives one comparison per level (level 0
against level 0 is an unchanged A/B comparison). Every comparison has disjoint processes on its two sides, so
process-to-process noise enters it as in the gate; the comparisons are not independent of each other (each process
is in half of them). Injection accuracy: per process, median time at L / median time at 0 - 1 (same process,
interleaved rounds), then the median and range over processes; the between-process figure is the median of the
gate's estimates. Writes worker-<i>.json/.log, eval.json and eval.md.

Stage `suite`: the default suite, `pytest benchmarks/ -p no:xdist --benchmark-json=suite-<n>.json`, timed; writes
suite-<n>.log and suite.md (wall time, and per case: setup, warm-up, timed rounds, checks).

Stage `gate`: `benchmarks/gate.py --base . --head . --pairs 3` over the pull-request job's cases (bench_support.GATE_K,
as the workflow selects them): one more unchanged comparison, end to end, and the time of the job's gate step.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gate_stats  # benchmarks/: this script's directory is on sys.path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LEVELS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.10)
XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
             "PYTEST_CURRENT_TEST")


# ------------------------------------------------------------------------------------------- worker
def rotated(levels: list[float], k: int) -> list[float]:
    k %= len(levels)
    return levels[k:] + levels[:k]


def worker(a) -> int:
    import torch

    import bench_support as bs
    import inject
    from llama_fast import harness
    from llama_fast.api import limit_cublas_workspace, load_model

    started = time.perf_counter()
    limit_cublas_workspace()  # as the suite's processes run
    device = torch.device(a.device)
    model = a.model or bs.default_model(a.device)[0]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    w = bs.SEED_WORKLOAD if device.type == "cuda" else bs.CPU_WORKLOAD
    variant = harness.VARIANTS[a.variant]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    if a.threads:
        torch.set_num_threads(a.threads)
    fast = load_model(model, device, dtype)
    runner = harness.fast_runner(fast, variant, w)
    call = harness.synchronized(runner, w.prompt())
    with harness.DeviceTimer(device) as t:  # compile + capture + first run
        call()
    warmup_s = t.seconds
    call()  # the suite's warm-up round: a one-chunk prefill captures its graph on the second call

    def timed() -> float:  # as pytest-benchmark's pedantic times a round: the host clock around a synchronized call
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    steps = w.new_tokens - 1
    call_s = statistics.median(timed() for _ in range(3))
    s = inject.sleeper(device)
    rate = s.measure_rate()
    levels = sorted(set(a.levels))
    units, calibrations = {}, {}
    for level in levels:
        if level == 0:
            units[level] = 0
            continue

        def measure(u: int) -> float:
            fast.step_hook = s.hook(u) if u > 0 else None
            return timed()

        cal = inject.calibrate(level, call_s, steps, rate, measure)
        units[level] = cal.units
        calibrations[level] = dict(units=cal.units, measured=cal.measured, tried=[list(x) for x in cal.tried])
    times: dict[float, list[float]] = {level: [] for level in levels}
    for r in range(a.rounds):
        for level in rotated(levels, a.index + r):
            fast.step_hook = s.hook(units[level]) if units[level] > 0 else None
            times[level].append(timed())
    fast.step_hook = None
    result = dict(index=a.index, model=model, variant=a.variant, workload=bs.workload_key(w),
                  device=harness.device_name(device), commit=harness.git_commit(str(REPO)), warmup_s=warmup_s,
                  call_s=call_s, steps=steps, sleep=s.kind, rate_per_s=rate.per_s, rate_overhead_s=rate.overhead_s,
                  levels={f"{level:g}": dict(times=times[level], **calibrations.get(level, {})) for level in levels},
                  process_s=time.perf_counter() - started)
    Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- comparisons
def splits(processes: int, per_side: int, cap: int | None = None) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Ordered (base, head) pairs of disjoint process sets of per_side each, in a fixed order; at most cap of them,
    taken evenly over that order (deterministic)."""
    if processes < 2 * per_side:
        raise ValueError(f"{processes} processes cannot give two disjoint sides of {per_side}")
    out = []
    for base in itertools.combinations(range(processes), per_side):
        rest = [p for p in range(processes) if p not in base]
        out += [(base, head) for head in itertools.combinations(rest, per_side)]
    if cap is not None and len(out) > cap:
        step = len(out) / cap
        out = [out[int(i * step)] for i in range(cap)]
    return out


def evaluate(workers: list[dict], *, per_side: int = 3, min_effect: float = gate_stats.DEFAULT_MIN_EFFECT,
             confidence: float = gate_stats.DEFAULT_CONFIDENCE, resamples: int = gate_stats.DEFAULT_RESAMPLES,
             cap: int | None = 40) -> dict:
    """Per level: the gate's verdicts over the comparisons, and the injection's measured accuracy."""
    levels = sorted(float(k) for k in workers[0]["levels"])
    key = lambda level: f"{level:g}"  # noqa: E731
    pairs = splits(len(workers), per_side, cap)
    out = dict(processes=len(workers), per_side=per_side, comparisons=len(pairs), min_effect=min_effect,
               confidence=confidence, levels=[])
    for level in levels:
        verdicts, estimates, widths = [], [], []
        for n, (b, h) in enumerate(pairs):
            c = gate_stats.compare([workers[i]["levels"]["0"]["times"] for i in b],
                                   [workers[i]["levels"][key(level)]["times"] for i in h], min_effect=min_effect,
                                   confidence=confidence, resamples=resamples, seed=f"eval:{level:g}:{n}")
            verdicts.append(c.verdict)
            estimates.append(c.slowdown)
            widths.append(c.high - c.low)
        paired = [statistics.median(w_["levels"][key(level)]["times"]) / statistics.median(w_["levels"]["0"]["times"])
                  - 1 for w_ in workers]
        calibrated = [w_["levels"][key(level)].get("measured") for w_ in workers]
        out["levels"].append(dict(
            level=level, fail=verdicts.count(gate_stats.FAIL), inconclusive=verdicts.count(gate_stats.INCONCLUSIVE),
            passed=verdicts.count(gate_stats.PASS), comparisons=len(verdicts),
            estimate_median=statistics.median(estimates), width_median=statistics.median(widths),
            paired_median=statistics.median(paired), paired_min=min(paired), paired_max=max(paired),
            calibrated_median=statistics.median(calibrated) if None not in calibrated else None))
    return out


def targets(ev: dict) -> list[str]:
    """The issue's targets, each with its figure and whether it is met."""
    by = {round(r["level"], 6): r for r in ev["levels"]}
    lines = []
    if 0.0 in by:
        r = by[0.0]
        ok = r["comparisons"] >= 12 and r["fail"] == 0 and r["inconclusive"] <= 1
        lines.append(f"- no false alarm (>= 12 unchanged comparisons, 0 FAIL, <= 1 INCONCLUSIVE): {r['comparisons']} "
                     f"comparisons, {r['fail']} FAIL, {r['inconclusive']} INCONCLUSIVE: {'met' if ok else 'NOT met'}")
    if 0.03 in by:
        r = by[0.03]
        ok = r["fail"] >= r["comparisons"] * 11 / 12
        lines.append(f"- injected 3 % failed in >= 11 of 12: {r['fail']} of {r['comparisons']}: "
                     f"{'met' if ok else 'NOT met'}")
    if 0.01 in by:
        r = by[0.01]
        lines.append(f"- injected 1 % never failed: {r['fail']} FAIL of {r['comparisons']}: "
                     f"{'met' if r['fail'] == 0 else 'NOT met'}")
    acc = [r for lv, r in by.items() if lv > 0]
    if acc:
        worst = max(abs(r["paired_median"] - r["level"]) for r in acc)
        lines.append(f"- injection within +/-0.5 point of the request: worst {100 * worst:.2f} points: "
                     f"{'met' if worst <= 0.005 else 'NOT met'}")
    return lines


def eval_markdown(ev: dict, workers: list[dict]) -> str:
    w0 = workers[0]
    conf = f"{100 * ev['confidence']:g} %"
    lines = [f"### Gate evaluation: {w0['device']}, commit `{w0['commit']}`, {w0['model']} {w0['variant']} "
             f"{w0['workload']}", "",
             f"{ev['processes']} processes; {ev['comparisons']} comparisons per level, each {ev['per_side']} base "
             f"processes (level 0) against {ev['per_side']} other processes (the level); {conf} interval, minimum "
             f"effect {100 * ev['min_effect']:g} %. Injection: {w0['sleep']}.", "",
             "| injected | FAIL | INCONCLUSIVE | PASS | gate estimate (median) | interval width (median) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in ev["levels"]:
        lines.append(f"| {100 * r['level']:g} % | {r['fail']} | {r['inconclusive']} | {r['passed']} | "
                     f"{100 * r['estimate_median']:+.2f} % | {100 * r['width_median']:.2f} points |")
    lines += ["", "| requested | measured, same process (median [min, max] over processes) | measured, between "
                  "processes (gate estimate) | calibration's last check |", "|---:|---:|---:|---:|"]
    for r in ev["levels"]:
        if r["level"] == 0:
            continue
        cal = f"{100 * r['calibrated_median']:+.2f} %" if r["calibrated_median"] is not None else "-"
        lines.append(f"| {100 * r['level']:g} % | {100 * r['paired_median']:+.2f} % [{100 * r['paired_min']:+.2f}, "
                     f"{100 * r['paired_max']:+.2f}] | {100 * r['estimate_median']:+.2f} % | {cal} |")
    lines += ["", "Per process: " + "; ".join(
        f"#{w['index']}: warm-up {w['warmup_s']:.1f} s, call {w['call_s']:.4f} s, process {w['process_s']:.0f} s"
        for w in workers), "", "Targets:", *targets(ev)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- stages
def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in XDIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_logged(cmd: list[str], log: Path, timeout: float | None = None) -> tuple[int, float]:
    print(f"[eval] {shlex.join(cmd)}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=clean_env(), stdout=f, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    return rc, time.perf_counter() - t0


def stage_eval(a, out: Path) -> int:
    workers = []
    for i in range(a.processes):
        js = out / f"worker-{i}.json"
        js.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--json", str(js), "--index", str(i),
               "--device", a.device, "--variant", a.variant, "--rounds", str(a.rounds),
               "--levels", ",".join(f"{x:g}" for x in a.levels)] + (["--model", a.model] if a.model else []) \
            + (["--threads", str(a.threads)] if a.threads else [])
        rc, secs = run_logged(cmd, out / f"worker-{i}.log")
        print(f"[eval] worker {i}: exit {rc} in {secs:.0f} s", flush=True)
        if rc != 0 or not js.is_file():
            print(f"gate_eval: error: worker {i} failed (exit {rc}); see {out / f'worker-{i}.log'}", file=sys.stderr)
            return 1
        workers.append(json.loads(js.read_text()))
    ev = evaluate(workers, per_side=a.per_side, cap=a.max_comparisons)
    ev["workers"] = workers
    (out / "eval.json").write_text(json.dumps(ev, indent=2))
    text = eval_markdown(ev, workers)
    (out / "eval.md").write_text(text)
    print(text)
    return 0


def suite_markdown(runs: list[tuple[str, float, dict]]) -> str:
    lines = ["### Default suite time", "", "| run | wall s | cases |", "|---|---:|---:|"]
    for name, secs, data in runs:
        lines.append(f"| {name} | {secs:.0f} | {len(data.get('benchmarks', []))} |")
    for name, _, data in runs:
        lines += ["", f"{name}, per case (s):", "",
                  "| case | setup | warm-up | timed rounds (+ warm-up rounds) | checks | median |",
                  "|---|---:|---:|---:|---:|---:|"]
        for b in data.get("benchmarks", []):
            e, st = b.get("extra_info") or {}, b["stats"]
            warm_rounds = e.get("warmup_rounds", 0) or 0
            lines.append(f"| {b.get('param')} | {e.get('setup_s', 0):.1f} | {e.get('warmup_s', 0):.1f} | "
                         f"{st['total'] + warm_rounds * st['median']:.1f} | {e.get('check_s', 0):.1f} | "
                         f"{st['median']:.4f} |")
    return "\n".join(lines) + "\n"


def stage_suite(a, out: Path) -> int:
    runs = []
    for n in range(1, a.suite_runs + 1):
        js = out / f"suite-{n}.json"
        cmd = [sys.executable, "-m", "pytest", "benchmarks/", "-p", "no:xdist", "-p", "no:cacheprovider",
               f"--benchmark-json={js}"] + (["--bench-device", "cpu"] if a.device == "cpu" else []) + a.suite_args
        rc, secs = run_logged(cmd, out / f"suite-{n}.log")
        print(f"[eval] suite run {n}: exit {rc} in {secs:.0f} s", flush=True)
        if rc != 0 or not js.is_file():
            print(f"gate_eval: error: suite run {n} failed (exit {rc}); see {out / f'suite-{n}.log'}", file=sys.stderr)
            return 1
        runs.append((f"suite-{n}", secs, json.loads(js.read_text())))
    text = suite_markdown(runs)
    (out / "suite.md").write_text(text)
    print(text)
    return 0


def stage_gate(a, out: Path) -> int:
    import bench_support as bs

    gate_out = out / "gate"
    cmd = [sys.executable, str(HERE / "gate.py"), "--base", str(REPO), "--head", str(REPO), "--pairs", "3",
           "--out", str(gate_out), "--", "-k", bs.GATE_K, "--bench-rounds", str(bs.GATE_ROUNDS)]
    rc, secs = run_logged(cmd, out / "gate.log")
    (out / "gate-time.txt").write_text(f"gate.py exit {rc} in {secs:.0f} s\n")
    print(f"[eval] gate: exit {rc} in {secs:.0f} s (report: {gate_out / 'report.md'})", flush=True)
    return 0 if rc in (0, 1, 3) else 1


def parse_levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()} | {0.0})
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated fractions, got {text!r}") from None
    if any(x < 0 for x in levels):
        raise argparse.ArgumentTypeError("levels must be >= 0")
    return levels


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from llama_fast.harness import FASTEST

        w = argparse.ArgumentParser(prog="gate_eval.py worker")
        w.add_argument("--json", required=True)
        w.add_argument("--index", type=int, default=0)
        w.add_argument("--device", default="cuda")
        w.add_argument("--model", default=None)
        w.add_argument("--variant", default=FASTEST)
        w.add_argument("--rounds", type=int, default=3)
        w.add_argument("--levels", type=parse_levels, default=list(LEVELS))
        w.add_argument("--threads", type=int, default=None)
        return worker(w.parse_args(argv[1:]))
    argv, suite_args = gate_stats.split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for every log, JSON and markdown file")
    p.add_argument("--stages", default="eval,suite", help="comma list of eval, suite, gate (default eval,suite)")
    p.add_argument("--processes", type=int, default=6, help="eval: worker processes (default 6)")
    p.add_argument("--per-side", type=int, default=3, help="eval: processes per side of a comparison (default 3)")
    p.add_argument("--max-comparisons", type=int, default=40, help="eval: comparisons per level at most")
    p.add_argument("--rounds", type=int, default=3, help="eval: timed rounds per level and process (default 3)")
    p.add_argument("--levels", type=parse_levels, default=list(LEVELS),
                   help="eval: injected fractions (0 always included; default 0,0.01,0.02,0.03,0.05,0.1)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model", default=None, help="default: the suite's (bench_support.default_model)")
    p.add_argument("--variant", default=None, help="eval: the row measured (default: harness.FASTEST)")
    p.add_argument("--threads", type=int, default=None, help="eval on CPU: torch.set_num_threads in the workers")
    p.add_argument("--suite-runs", type=int, default=1, help="suite: runs of the default suite (default 1)")
    a = p.parse_args(argv)
    a.suite_args = suite_args
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in ("eval", "suite", "gate")]
    if unknown or not stages:
        p.error(f"--stages: unknown {unknown} (choose from eval, suite, gate)")
    if "eval" in stages and (a.processes < 2 * a.per_side or a.per_side < 1 or a.rounds < 1):
        p.error("need --per-side >= 1, --processes >= 2 x --per-side and --rounds >= 1")
    if a.suite_runs < 1:
        p.error("--suite-runs must be at least 1")
    if a.variant is None:
        from llama_fast.harness import FASTEST

        a.variant = FASTEST
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device visible (use --device cpu to test the machinery)")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rc = 0
    for stage in stages:
        rc = {"eval": stage_eval, "suite": stage_suite, "gate": stage_gate}[stage](a, out) or rc
    print(f"[eval] stages {','.join(stages)} done in {time.perf_counter() - t0:.0f} s; results under {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
