#!/usr/bin/env python3
"""The statistical regression gate: base and head in interleaved pytest processes on one runner, then a verdict.

  python benchmarks/gate.py --base BASE_CHECKOUT --head HEAD_CHECKOUT --out gate-out [--pairs 3] [--min-effect 2] \
      [--head-args="--bench-inject-slowdown=0.03"] -- [pytest args: -k CASES --bench-rounds 5 ...]

Runs base, head, base, head, ... (--pairs of each; default 3). Each process is one
`python -m pytest benchmarks/ -p no:xdist --benchmark-json=OUT/<side>-<i>.json [pytest args]` in its own checkout,
with that checkout first on PYTHONPATH (so each side imports its own llama_fast; checked before anything runs).
Then benchmarks/report.py's gate judges every case from the per-process rounds (benchmarks/gate_stats.py:
slowdown, 99 % interval, verdict) and writes OUT/report.md (markdown for a job summary) and OUT/gate.json.

Exit status: 0 PASS; 1 FAIL (a case slower than --min-effect with the interval's confidence, or the head's suite
failed: a correctness or memory check, or an error); 3 INCONCLUSIVE (not a pass: an interval straddles the
threshold); 2 no baseline (the base has no benchmarks/ suite, its suite failed, or it ran no selected case).
A failing head process stops the run (the gate has failed); logs: OUT/<side>-<i>.log.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gate_stats  # benchmarks/: this script's directory is on sys.path
import report

XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
             "PYTEST_CURRENT_TEST")
NO_BASELINE = report.NO_BASELINE
FAIL = gate_stats.EXIT_CODES[gate_stats.FAIL]


def schedule(pairs: int) -> list[tuple[str, int]]:
    """The order the processes run in: base 1, head 1, base 2, head 2, ..."""
    return [(side, i) for i in range(1, pairs + 1) for side in ("base", "head")]


def side_env(checkout: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in XDIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def process_command(out_json: Path, pytest_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks/", "-p", "no:xdist", "-p", "no:cacheprovider",
            f"--benchmark-json={out_json}", *pytest_args]


def imported_package(checkout: Path) -> str:
    """Where the checkout's processes import llama_fast from."""
    r = subprocess.run([sys.executable, "-c", "import llama_fast; print(llama_fast.__file__)"], cwd=checkout,
                       env=side_env(checkout), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"cannot import llama_fast in {checkout}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout.strip()


def write_outcome(out: Path, text: str, result: dict) -> None:
    (out / "report.md").write_text(text)
    (out / "gate.json").write_text(json.dumps(result, indent=2))
    print(text)


def stop(out: Path, code: int, headline: str, detail: str, ran: list[dict]) -> int:
    text = f"### llama_fast regression gate: {headline}\n\n{detail}\n"
    write_outcome(out, text, dict(verdict=headline, exit=code, processes=ran, cases=[]))
    return code


def main(argv=None) -> int:
    argv, pytest_args = gate_stats.split_passthrough(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base checkout (a directory with benchmarks/ and llama_fast/)")
    p.add_argument("--head", required=True, help="the head checkout")
    p.add_argument("--out", required=True, help="directory for the per-process JSON and logs, report.md, gate.json")
    p.add_argument("--pairs", type=int, default=3, help="processes per side, interleaved (default 3)")
    gate_stats.add_options(p)
    p.add_argument("--head-args", default="", metavar="ARGS",
                   help="extra pytest arguments for the head's processes only, e.g. --head-args=--bench-inject-slowdown=0.03 "
                        "(test only: proves the gate fires)")
    a = p.parse_args(argv)
    if a.pairs < 1:
        p.error("--pairs must be at least 1")
    if not 0 < a.confidence < 100 or a.min_effect < 0:
        p.error("--confidence must lie in (0, 100) and --min-effect be >= 0")
    base, head = Path(a.base).resolve(), Path(a.head).resolve()
    if not (head / "benchmarks" / "conftest.py").is_file():
        p.error(f"--head {head} has no benchmarks/ suite")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (base / "benchmarks" / "conftest.py").is_file():
        return stop(out, NO_BASELINE, "NO BASELINE", f"The base checkout {base} has no benchmarks/ suite: nothing to "
                    "compare against (the gate fails closed).", [])
    for side, checkout in (("base", base), ("head", head)):
        try:
            where = imported_package(checkout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return stop(out, NO_BASELINE if side == "base" else FAIL, "ERROR", f"{side}: {e}", [])
        if not Path(where).resolve().is_relative_to(checkout):
            return stop(out, NO_BASELINE if side == "base" else FAIL, "ERROR",
                        f"the {side}'s processes would import llama_fast from {where}, not from {checkout}", [])
        print(f"[gate] {side}: {checkout} (llama_fast from {where})", flush=True)

    head_extra = shlex.split(a.head_args)
    ran: list[dict] = []
    files: dict[str, list[Path]] = {"base": [], "head": []}
    for side, i in schedule(a.pairs):
        checkout = base if side == "base" else head
        name = f"{side}-{i}"
        out_json, log = out / f"{name}.json", out / f"{name}.log"
        out_json.unlink(missing_ok=True)
        cmd = process_command(out_json, pytest_args + (head_extra if side == "head" else []))
        print(f"[gate] {name}: {shlex.join(cmd)}", flush=True)
        started = time.time()
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=checkout, env=side_env(checkout), stdout=f, stderr=subprocess.STDOUT).returncode
        ended = time.time()
        entry = dict(process=name, side=side, index=i, started=started, ended=ended,
                     seconds=round(ended - started, 2), exit=rc, json=str(out_json), log=str(log))
        ran.append(entry)
        tail = (log.read_text().strip().splitlines() or [""])[-1]
        print(f"[gate] {name}: exit {rc} in {entry['seconds']:.0f} s: {tail}", flush=True)
        if rc != 0 or not out_json.is_file():
            why = "no case selected" if rc == 5 else f"pytest exit {rc}"
            if side == "base":
                return stop(out, NO_BASELINE, "NO BASELINE", f"The base's process {name} failed ({why}; log: {log}): "
                            "nothing to compare against (the gate fails closed).", ran)
            return stop(out, FAIL, "FAIL", f"The head's process {name} failed ({why}; log: {log}): a correctness, "
                        "memory or other test failure fails the gate.", ran)
        files[side].append(out_json)

    base_runs = [report.load(f) for f in files["base"]]
    head_runs = [report.load(f) for f in files["head"]]
    problem = report.gate_baseline_problem(base_runs, head_runs)
    if problem:
        return stop(out, NO_BASELINE, "NO BASELINE", f"{problem}: nothing was compared.", ran)
    text, result = report.gate(base_runs, head_runs, min_effect=a.min_effect / 100, confidence=a.confidence / 100,
                               resamples=a.resamples, seed=a.seed, order=[e["process"] for e in ran])
    result["processes"] = ran
    write_outcome(out, text, result)
    return result["exit"]


if __name__ == "__main__":
    sys.exit(main())
