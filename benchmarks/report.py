#!/usr/bin/env python3
"""Readable reports over pytest-benchmark JSON files (saved with --benchmark-save or --benchmark-json).

  report.py BASE.json HEAD.json [--fail-over PCT] [--out report.md]
      markdown table per case: tok/s before, after and the change; with --fail-over, exit 1 when a case's
      median time grew by more than PCT percent (the same rule as --benchmark-compare-fail=median:PCT%),
      and exit 2 when there is no baseline (fail closed).
  report.py --spread RUN1.json RUN2.json RUN3.json [--out spread.md]
      run-to-run spread of the same suite on the same machine: per case, tok/s of each run and
      (max - min) / min of the median times; picks a threshold above the noise.
  report.py --merge OUT.json SHARD0.json SHARD1.json ...
      one pytest-benchmark JSON from shard runs (benchmarks/shard.py): cases must be disjoint, GPU model equal.
  report.py --summary RUN.json
      tok/s, memory, roofline fraction and hash per case of one run.

Standard library only: runs anywhere the JSON files are.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

NO_BASELINE = 2


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def case_name(bench: dict) -> str:
    return bench.get("param") or bench["name"]


def tokens(bench: dict) -> int | None:
    return (bench.get("extra_info") or {}).get("tokens")


def tok_s(bench: dict) -> float | None:
    t, med = tokens(bench), bench["stats"]["median"]
    return t / med if t and med else None


def gpu_of(run: dict) -> str:
    lf = run.get("machine_info", {}).get("llama_fast") or {}
    return lf.get("gpu_name") or lf.get("device") or run.get("machine_info", {}).get("node", "?")


def commit_of(run: dict) -> str:
    lf = run.get("machine_info", {}).get("llama_fast") or {}
    return lf.get("commit") or (run.get("commit_info") or {}).get("id", "?")[:10]


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------------- compare
def compare(base: dict, head: dict, fail_over: float | None) -> tuple[str, list[str]]:
    """(markdown, regressed case names)."""
    b = {bench["fullname"]: bench for bench in base["benchmarks"]}
    h = {bench["fullname"]: bench for bench in head["benchmarks"]}
    lines = [f"### llama_fast benchmarks: {gpu_of(head)}",
             f"base `{commit_of(base)}` vs head `{commit_of(head)}`"
             + (f"; regression = median time +{fail_over:g}% or more" if fail_over is not None else ""), "",
             "| case | tok/s before | tok/s after | change | median s before | median s after | verdict |",
             "|---|---:|---:|---:|---:|---:|---|"]
    regressed = []
    for name in list(h) + [n for n in b if n not in h]:
        hb, bb = h.get(name), b.get(name)
        label = case_name(hb or bb)
        if hb is None:
            lines.append(f"| {label} | {fmt(tok_s(bb))} | - | - | {fmt(bb['stats']['median'], '.4f')} | - | removed |")
            continue
        if bb is None:
            lines.append(f"| {label} | - | {fmt(tok_s(hb))} | - | - | {fmt(hb['stats']['median'], '.4f')} | "
                         "new (no baseline) |")
            continue
        tb, th = tok_s(bb), tok_s(hb)
        mb, mh = bb["stats"]["median"], hb["stats"]["median"]
        time_change = (mh / mb - 1) * 100 if mb else math.inf
        change = (th / tb - 1) * 100 if tb and th else None
        verdict = "ok"
        if fail_over is not None and time_change > fail_over:
            verdict = f"**REGRESSION** (time +{time_change:.1f}%)"
            regressed.append(label)
        lines.append(f"| {label} | {fmt(tb)} | {fmt(th)} | {fmt(change, '+.1f')}% | {mb:.4f} | {mh:.4f} | {verdict} |")
    lines.append("")
    if regressed:
        lines.append(f"**Performance regressed** in {len(regressed)} case(s): {', '.join(regressed)}")
    elif fail_over is not None:
        lines.append(f"No case regressed by more than {fail_over:g}%.")
    return "\n".join(lines) + "\n", regressed


def no_baseline_message(path: str, why: str) -> str:
    return (f"### llama_fast benchmarks: NO BASELINE\n\nNo baseline for this GPU ({why}: {path}). Nothing was "
            "compared. Save one on the base commit first: `pytest benchmarks/ --benchmark-save=main`.\n")


# ------------------------------------------------------------------------------------------- spread
def spread(runs: list[dict], names: list[str]) -> str:
    common = [n for n in (b["fullname"] for b in runs[0]["benchmarks"])
              if all(any(b["fullname"] == n for b in r["benchmarks"]) for r in runs[1:])]
    by_run = [{b["fullname"]: b for b in r["benchmarks"]} for r in runs]
    cols = " | ".join(f"tok/s {Path(n).stem}" for n in names)
    lines = [f"### Run-to-run spread on {gpu_of(runs[0])} ({len(runs)} runs)", "",
             f"| case | {cols} | spread of median time |", "|---|" + "---:|" * (len(runs) + 1)]
    spreads = []
    for name in common:
        meds = [r[name]["stats"]["median"] for r in by_run]
        s = (max(meds) - min(meds)) / min(meds) * 100
        spreads.append(s)
        lines.append(f"| {case_name(by_run[0][name])} | " + " | ".join(fmt(tok_s(r[name])) for r in by_run)
                     + f" | {s:.2f}% |")
    if spreads:
        worst = max(spreads)
        threshold = max(5, math.ceil(2 * worst))
        lines += ["", f"max spread {worst:.2f}%, median spread {statistics.median(spreads):.2f}% over "
                      f"{len(spreads)} cases.",
                  f"A gate at twice the worst spread: `--benchmark-compare-fail=median:{threshold}%`."]
    else:
        lines += ["", "No case is present in every run."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- merge
def merge(runs: list[dict]) -> dict:
    gpus = {gpu_of(r) for r in runs}
    if len(gpus) > 1:
        raise SystemExit(f"refusing to merge runs from different GPU models: {sorted(gpus)}")
    commits = {commit_of(r) for r in runs}
    if len(commits) > 1:
        print(f"warning: shards ran at different commits: {sorted(commits)}", file=sys.stderr)
    seen, benches = {}, []
    for i, r in enumerate(runs):
        for b in r["benchmarks"]:
            if b["fullname"] in seen:
                raise SystemExit(f"case {b['fullname']} is in shard {seen[b['fullname']]} and shard {i}: "
                                 "shards must be disjoint")
            seen[b["fullname"]] = i
            benches.append(b)
    out = dict(runs[0])
    out["machine_info"] = json.loads(json.dumps(runs[0]["machine_info"]))
    lf = out["machine_info"].setdefault("llama_fast", {})
    lf["shard"] = None
    lf["merged_shards"] = len(runs)
    out["benchmarks"] = benches
    return out


def summary(run: dict) -> str:
    lines = [f"### llama_fast benchmarks: {gpu_of(run)} at `{commit_of(run)}`", "",
             "| case | tok/s | peak MB | budget MB | roofline | hash | warm-up s |", "|---|---:|---:|---:|---:|---|---:|"]
    for b in run["benchmarks"]:
        e = b.get("extra_info") or {}
        lines.append(f"| {case_name(b)} | {fmt(tok_s(b))} | {fmt(e.get('max_mem_mb'), '.0f')} | "
                     f"{fmt(e.get('mem_budget_mb'), '.0f')} | {fmt(e.get('roofline_fraction'), '.1%')} | "
                     f"{e.get('hash', '-')} | {fmt(e.get('warmup_s'), '.1f')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--fail-over", type=float, default=None, metavar="PCT",
                   help="exit 1 if a case's median time grew by more than PCT%%; exit 2 if there is no baseline")
    p.add_argument("--spread", action="store_true", help="spread of N runs of the same suite")
    p.add_argument("--merge", metavar="OUT", help="merge shard JSON files into OUT")
    p.add_argument("--summary", action="store_true", help="summarize one run")
    p.add_argument("--out", help="also write the markdown here")
    a = p.parse_args(argv)

    def emit(text: str):
        print(text)
        if a.out:
            Path(a.out).write_text(text)

    if a.merge:
        if not a.files:
            p.error("--merge needs shard files")
        merged = merge([load(f) for f in a.files])
        Path(a.merge).write_text(json.dumps(merged, indent=4))
        emit(summary(merged))
        return 0
    if a.spread:
        if len(a.files) < 2:
            p.error("--spread needs at least two runs")
        emit(spread([load(f) for f in a.files], a.files))
        return 0
    if a.summary:
        if len(a.files) != 1:
            p.error("--summary takes one file")
        emit(summary(load(a.files[0])))
        return 0
    if len(a.files) != 2:
        p.error("give BASE.json HEAD.json (or --spread / --merge / --summary)")
    base_path, head_path = a.files
    head = load(head_path)
    base = None
    if not Path(base_path).is_file():
        why = "file not found"
    else:
        base = load(base_path)
        why = "the baseline file holds no benchmarks"
    if base is None or not base.get("benchmarks"):
        emit(no_baseline_message(base_path, why))
        return NO_BASELINE if a.fail_over is not None else 0
    if gpu_of(base) != gpu_of(head):
        emit(no_baseline_message(base_path, f"baseline is from {gpu_of(base)}, this run is on {gpu_of(head)}"))
        return NO_BASELINE if a.fail_over is not None else 0
    text, regressed = compare(base, head, a.fail_over)
    emit(text)
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
