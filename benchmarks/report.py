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
  report.py --gate --base B1.json B2.json B3.json --head H1.json H2.json H3.json [--min-effect 2] [--out gate.md]
      the statistical gate over one pytest-benchmark JSON per process and side (benchmarks/gate.py writes them):
      per case the slowdown, its 99 % interval (benchmarks/gate_stats.py) and a verdict. Exit 0 PASS, 1 FAIL,
      3 INCONCLUSIVE (not a pass), 2 no baseline (the base has no case, or another GPU).
  report.py --trend STORAGE --out trend.png [--name main]
      each case's tok/s over the saved runs NNNN_main.json under STORAGE (oldest to newest, commit on the x
      axis) as a PNG; prints the last commits as a markdown table.

Standard library only, except --trend (matplotlib): runs anywhere the JSON files are.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import gate_stats  # benchmarks/gate_stats.py: this script's directory is on sys.path

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


# ------------------------------------------------------------------------------------------- gate
def rounds_of(bench: dict) -> list[float]:
    """A case's timed rounds in one process (--benchmark-json keeps them; a save without data has the median)."""
    data = bench["stats"].get("data")
    return list(data) if data else [bench["stats"]["median"]]


def per_case(runs: list[dict]) -> dict[str, list[dict]]:
    """case name -> its benchmark entry in each process that ran it (process order kept)."""
    out: dict[str, list[dict]] = {}
    for run in runs:
        for b in run.get("benchmarks", []):
            out.setdefault(case_name(b), []).append(b)
    return out


def pct(x: float, spec: str = "+.2f") -> str:
    return f"{format(100 * x, spec)} %"


def injected_of(runs: list[dict]) -> float:
    return max(((r.get("machine_info", {}).get("llama_fast") or {}).get("injected_slowdown") or 0.0)
               for r in runs) if runs else 0.0


def gate(base_runs: list[dict], head_runs: list[dict], *, min_effect: float = gate_stats.DEFAULT_MIN_EFFECT,
         confidence: float = gate_stats.DEFAULT_CONFIDENCE, resamples: int = gate_stats.DEFAULT_RESAMPLES,
         seed: int | str = 0, order: list[str] | None = None) -> tuple[str, dict]:
    """(markdown, result) of the statistical gate. base_runs / head_runs: one pytest-benchmark JSON per process.
    result: {"verdict", "exit", "cases": [{case, verdict, slowdown, low, high, ...}]}; cases present on one side
    only are listed (new / removed) and not judged. order: the processes as they ran, e.g. ["base-1", "head-1"]."""
    b_cases, h_cases = per_case(base_runs), per_case(head_runs)
    conf, lines = f"{100 * confidence:g} %", []
    gpu = gpu_of(head_runs[0]) if head_runs else "?"
    commits = lambda runs: ", ".join(sorted({f"`{commit_of(r)}`" for r in runs})) or "-"  # noqa: E731
    lines += [f"### llama_fast regression gate: {gpu}",
              f"base {commits(base_runs)} ({len(base_runs)} processes) against head {commits(head_runs)} "
              f"({len(head_runs)} processes) on one runner"
              + (f", run in this order: {', '.join(order)}" if order else "") + ".",
              f"A case FAILs when the whole {conf} interval of its slowdown (median time, head against base) lies "
              f"above +{100 * min_effect:g} %, is INCONCLUSIVE (not a pass) when the interval straddles it, and "
              "PASSes otherwise (two-level bootstrap over processes and rounds: docs/BENCHMARKS.md).", ""]
    injected = injected_of(head_runs)
    if injected:
        lines += [f"TEST ONLY: the head's processes injected a +{100 * injected:g} % slowdown "
                  "(--bench-inject-slowdown).", ""]
    lines += [f"| case | tok/s base | tok/s head | slowdown | {conf} interval | processes x rounds (base / head) | "
              "verdict |", "|---|---:|---:|---:|---|---|---|"]
    cases, verdicts = [], []
    for name in list(h_cases) + [n for n in b_cases if n not in h_cases]:
        hb, bb = h_cases.get(name, []), b_cases.get(name, [])
        if not bb or not hb:
            what = "new (no baseline): not judged" if not bb else "removed: not judged"
            lines.append(f"| {name} | - | - | - | - | {len(bb)} / {len(hb)} | {what} |")
            cases.append(dict(case=name, verdict=what.split(" ")[0]))
            continue
        c = gate_stats.compare([rounds_of(x) for x in bb], [rounds_of(x) for x in hb], min_effect=min_effect,
                               confidence=confidence, resamples=resamples, seed=f"{seed}:{name}")
        tokens_ = tokens(hb[0]) or tokens(bb[0])
        tb, th = (tokens_ / c.base_s, tokens_ / c.head_s) if tokens_ else (None, None)
        mark = {"FAIL": "**FAIL**", "INCONCLUSIVE": "**INCONCLUSIVE**"}.get(c.verdict, c.verdict)
        lines.append(f"| {name} | {fmt(tb)} | {fmt(th)} | {pct(c.slowdown)} | [{pct(c.low)}, {pct(c.high)}] | "
                     f"{c.base_processes}x{c.base_rounds // c.base_processes} / "
                     f"{c.head_processes}x{c.head_rounds // c.head_processes} | {mark} |")
        verdicts.append(c.verdict)
        cases.append(dict(case=name, verdict=c.verdict, slowdown=c.slowdown, low=c.low, high=c.high,
                          base_s=c.base_s, head_s=c.head_s, base_processes=c.base_processes,
                          head_processes=c.head_processes, tok_s_base=tb, tok_s_head=th))
    overall = gate_stats.worst(verdicts)
    lines.append("")
    k = min([len(base_runs), len(head_runs)])
    if k < 3:
        lines.append(f"Note: {k} process(es) per side. "
                     + ("With one, the interval covers round-to-round noise only, not process-to-process noise. "
                        if k == 1 else "Below 3, process-to-process noise is barely sampled. ")
                     + "The pull-request gate runs 3.")
    failed = [c["case"] for c in cases if c["verdict"] == gate_stats.FAIL]
    unsure = [c["case"] for c in cases if c["verdict"] == gate_stats.INCONCLUSIVE]
    if failed:
        lines.append(f"**FAIL**: {len(failed)} case(s) slower by more than {100 * min_effect:g} % with {conf} "
                     f"confidence: {', '.join(failed)}")
    if unsure:
        lines.append(f"**INCONCLUSIVE**: {len(unsure)} case(s) whose interval straddles +{100 * min_effect:g} %: "
                     f"{', '.join(unsure)}. Not a pass: rerun the job, or run more pairs "
                     "(`benchmarks/gate.py --pairs 5`), to narrow the interval.")
    if not verdicts:
        lines.append("No case ran on both sides: nothing was judged.")
    elif overall == gate_stats.PASS:
        lines.append(f"**PASS**: no case slower by more than {100 * min_effect:g} % ({len(verdicts)} judged).")
    result = dict(verdict=overall, exit=gate_stats.EXIT_CODES[overall], min_effect=min_effect,
                  confidence=confidence, resamples=resamples, seed=seed, order=order, cases=cases)
    return "\n".join(lines) + "\n", result


def gate_baseline_problem(base_runs: list[dict], head_runs: list[dict]) -> str | None:
    """Why the base cannot be compared (no case, another GPU), or None."""
    if not any(r.get("benchmarks") for r in base_runs):
        return "the base's processes hold no benchmarks"
    gpus = {gpu_of(r) for r in base_runs + head_runs}
    if len(gpus) > 1:
        return f"the processes ran on different GPU models: {sorted(gpus)}"
    return None


# ------------------------------------------------------------------------------------------- trend
def saved_runs(storage: str | Path, name: str = "main") -> list[dict]:
    """The saved runs NNNN_<name>.json anywhere under storage, oldest first (by their datetime, then file name)."""
    files = sorted(Path(storage).rglob(f"[0-9][0-9][0-9][0-9]_{name}.json"))
    runs = []
    for f in files:
        run = load(f)
        if run.get("benchmarks"):
            runs.append((run.get("datetime") or "", f.name, run))
    runs.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in runs]


def trend_table(runs: list[dict], last: int = 8) -> str:
    shown = runs[-last:]
    cols = [commit_of(r)[:10] for r in shown]
    lines = [f"### tok/s over the last {len(shown)} saved main runs ({gpu_of(runs[-1])}; trend.png has all "
             f"{len(runs)})", "", "| case | " + " | ".join(f"`{c}`" for c in cols) + " | last change |",
             "|---|" + "---:|" * (len(cols) + 1)]
    names = list(dict.fromkeys(case_name(b) for r in shown for b in r["benchmarks"]))
    for name in names:
        vals = [next((tok_s(b) for b in r["benchmarks"] if case_name(b) == name), None) for r in shown]
        have = [v for v in vals if v]
        change = f"{(have[-1] / have[-2] - 1) * 100:+.1f}%" if len(have) >= 2 else "-"
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + f" | {change} |")
    return "\n".join(lines) + "\n"


def plot_trend(runs: list[dict], out: str | Path) -> Path:
    """One panel per case: tok/s against the commit (oldest left), one line per GPU model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    commits = list(dict.fromkeys(commit_of(r)[:10] for r in runs))
    x_of = {c: i for i, c in enumerate(commits)}
    names = list(dict.fromkeys(case_name(b) for r in runs for b in r["benchmarks"]))
    gpus = list(dict.fromkeys(gpu_of(r) for r in runs))
    cols = 2 if len(names) > 1 else 1
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 0.45 * len(commits) * cols), 2.8 * rows), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes.flat, names):
        for gpu in gpus:
            pts = [(x_of[commit_of(r)[:10]], tok_s(b)) for r in runs if gpu_of(r) == gpu
                   for b in r["benchmarks"] if case_name(b) == name and tok_s(b)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=gpu)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("tok/s")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xticks(range(len(commits)))
        ax.set_xticklabels(commits, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("commit (oldest to newest)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle("llama_fast benchmarks: tok/s of each saved main run")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--fail-over", type=float, default=None, metavar="PCT",
                   help="exit 1 if a case's median time grew by more than PCT%%; exit 2 if there is no baseline")
    p.add_argument("--spread", action="store_true", help="spread of N runs of the same suite")
    p.add_argument("--merge", metavar="OUT", help="merge shard JSON files into OUT")
    p.add_argument("--summary", action="store_true", help="summarize one run")
    p.add_argument("--gate", action="store_true", help="statistical gate over --base and --head process files")
    p.add_argument("--base", nargs="+", default=[], metavar="JSON", help="--gate: one JSON per base process")
    p.add_argument("--head", nargs="+", default=[], metavar="JSON", help="--gate: one JSON per head process")
    gate_stats.add_options(p, prefix="--gate: ")
    p.add_argument("--trend", metavar="STORAGE", help="plot tok/s over the saved main runs under STORAGE (--out PNG)")
    p.add_argument("--name", default="main", help="--trend: the saved runs' name (NNNN_<name>.json)")
    p.add_argument("--out", help="also write the markdown here (--trend: the PNG)")
    a = p.parse_args(argv)

    def emit(text: str):
        print(text)
        if a.out:
            Path(a.out).write_text(text)

    if a.trend:
        if not a.out:
            p.error("--trend needs --out trend.png")
        if not Path(a.trend).is_dir():
            p.error(f"--trend: no such directory: {a.trend}")
        runs = saved_runs(a.trend, a.name)
        if not runs:
            p.error(f"--trend: no saved run NNNN_{a.name}.json under {a.trend}")
        plot_trend(runs, a.out)
        print(trend_table(runs))
        print(f"trend of {len(runs)} saved runs: {a.out}", file=sys.stderr)
        return 0
    if a.gate:
        if not a.base or not a.head or a.files:
            p.error("--gate takes --base FILES... --head FILES... (one JSON per process)")
        if not 0 < a.confidence < 100 or a.min_effect < 0:
            p.error("--confidence must lie in (0, 100) and --min-effect be >= 0")
        missing = [f for f in a.base + a.head if not Path(f).is_file()]
        if missing:
            p.error(f"--gate: no such file: {missing[0]}")
        base_runs, head_runs = [load(f) for f in a.base], [load(f) for f in a.head]
        problem = gate_baseline_problem(base_runs, head_runs)
        if problem:
            emit(f"### llama_fast regression gate: NO BASELINE\n\n{problem}: nothing was compared.\n")
            return NO_BASELINE
        text, result = gate(base_runs, head_runs, min_effect=a.min_effect / 100, confidence=a.confidence / 100,
                            resamples=a.resamples, seed=a.seed)
        emit(text)
        return result["exit"]
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
        p.error("give BASE.json HEAD.json (or --spread / --merge / --summary / --gate / --trend)")
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
