#!/usr/bin/env python3
"""Run the benchmark suite across several GPUs of one host, one pytest process per GPU, then merge.

pytest-benchmark switches itself off under xdist, so instead each GPU i gets its own process with
CUDA_VISIBLE_DEVICES=i and `--bench-shard i/N` (a disjoint, round-robin subset of the selected cases),
writing shard-i.json; the shards are merged into merged.json (benchmarks/report.py --merge) and summarized
in report.md (or compared with --compare BASE.json).

  python benchmarks/shard.py --gpus 0,1 --out bench-out [--save main] [--compare base.json --fail-over 5] \
      -- [extra pytest args, e.g. --bench-sweep -k graphs]
  python benchmarks/shard.py --device cpu --gpus 0,1 --out /tmp/x -- --bench-model random:tiny   (machinery test)
  python benchmarks/shard.py --merge-only shards/ --out bench-out [--compare-latest STORAGE --fail-over 5]

Past one host (.github/workflows/gpu-bench-shards.yml): each self-hosted runner of the same GPU model runs one
shard (`pytest benchmarks/ -p no:xdist --bench-shard i/N --benchmark-json=shard-i.json`), and one job gathers the
shard files (--merge-only DIR: every shard-*.json under DIR) into the same merged.json and report.md, compared
with a file (--compare) or with the newest saved main run under a storage directory (--compare-latest).

--save NAME stores merged.json in the per-GPU pytest-benchmark storage (.benchmarks/<gpu-slug>/<machine-id>/
NNNN_NAME.json, or under --storage DIR) so later single-process runs can --benchmark-compare against it.
Exit status: non-zero if any shard failed or (with --compare/--fail-over) a case regressed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (benchmarks/report.py)

XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS",
             "PYTEST_CURRENT_TEST")


def shard_command(i: int, n: int, out: Path, device: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(HERE), "-p", "no:xdist", "-p", "no:cacheprovider",
           "--bench-shard", f"{i}/{n}", f"--benchmark-json={out / f'shard-{i}.json'}"]
    if device == "cpu":
        cmd += ["--bench-device", "cpu"]
    return cmd + extra


def save_to_storage(merged: dict, name: str, storage: Path | None) -> Path:
    """Store like --benchmark-save: <storage>/<machine id>/<NNNN>_<name>.json (next free number)."""
    from pytest_benchmark.utils import get_machine_id

    slug = (merged["machine_info"].get("llama_fast") or {}).get("storage_slug") or "unknown"
    root = storage or REPO / ".benchmarks" / slug
    d = root / get_machine_id()
    d.mkdir(parents=True, exist_ok=True)
    nums = [int(p.name[:4]) for p in d.glob("[0-9][0-9][0-9][0-9]_*.json")]
    path = d / f"{max(nums, default=0) + 1:04d}_{name}.json"
    path.write_text(json.dumps(merged, indent=4))
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default=None, help="comma list of GPU indices (default: all visible GPUs)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", default="bench-shards", help="directory for shard-i.json/.log, merged.json, report.md")
    p.add_argument("--save", default=None, metavar="NAME", help="store merged.json as a pytest-benchmark save")
    p.add_argument("--storage", default=None, help="storage directory for --save (default .benchmarks/<gpu-slug>)")
    p.add_argument("--compare", default=None, metavar="BASE.json", help="compare merged.json with BASE.json")
    p.add_argument("--compare-latest", default=None, metavar="STORAGE",
                   help="compare merged.json with the newest NNNN_main.json under STORAGE")
    p.add_argument("--fail-over", type=float, default=None, metavar="PCT",
                   help="with --compare / --compare-latest: regression gate")
    p.add_argument("--merge-only", default=None, metavar="DIR",
                   help="run nothing: merge the shard-*.json files found under DIR (other runners' shards)")
    a = p.parse_args(argv)
    if a.compare and a.compare_latest:
        p.error("give --compare or --compare-latest, not both")
    if a.fail_over is not None and not (a.compare or a.compare_latest):
        p.error("--fail-over needs --compare or --compare-latest")
    out = Path(a.out).resolve()
    if a.merge_only is not None:
        if a.gpus is not None or extra:
            p.error("--merge-only runs nothing: no --gpus and no pytest arguments")
        if not Path(a.merge_only).is_dir():
            p.error(f"--merge-only: no such directory: {a.merge_only}")
        shards = sorted(Path(a.merge_only).rglob("shard-*.json"))
        if not shards:
            print(f"shard.py: no shard-*.json under {a.merge_only}", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        return finish(shards, out, a, [])

    if a.gpus is None:
        if a.device == "cpu":
            p.error("--device cpu needs --gpus (process labels, e.g. 0,1)")
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
        if not gpus:
            p.error("no CUDA device visible; pass --device cpu to test the machinery")
    else:
        gpus = [g.strip() for g in a.gpus.split(",") if g.strip()]
    out.mkdir(parents=True, exist_ok=True)
    n = len(gpus)
    env = {k: v for k, v in os.environ.items() if k not in XDIST_ENV}
    procs = []
    for i, gpu in enumerate(gpus):
        penv = dict(env, CUDA_VISIBLE_DEVICES=gpu if a.device == "cuda" else "")
        (out / f"shard-{i}.json").unlink(missing_ok=True)
        log = open(out / f"shard-{i}.log", "w")
        cmd = shard_command(i, n, out, a.device, extra)
        print(f"[shard {i}/{n}] CUDA_VISIBLE_DEVICES={penv['CUDA_VISIBLE_DEVICES']} {' '.join(cmd)}", flush=True)
        procs.append((i, subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for i, proc, log in procs:
        rc = proc.wait()
        log.close()
        tail = (out / f"shard-{i}.log").read_text().strip().splitlines()[-1:]
        print(f"[shard {i}/{n}] exit {rc}: {tail[0] if tail else ''}", flush=True)
        if rc not in (0, 5):  # 5: this shard got no case (more GPUs than selected cases)
            failed.append(i)

    shards = [out / f"shard-{i}.json" for i in range(n) if (out / f"shard-{i}.json").exists()]
    if not shards:
        print("no shard produced results", file=sys.stderr)
        return 1
    return finish(shards, out, a, failed)


def finish(shards: list[Path], out: Path, a: argparse.Namespace, failed: list[int]) -> int:
    """Merge the shard files into out/merged.json, write out/report.md (the summary, or the comparison with the
    baseline a asks for), save if asked. -> the exit status."""
    merged = report.merge([report.load(f) for f in shards])
    (out / "merged.json").write_text(json.dumps(merged, indent=4))
    print(f"merged {len(merged['benchmarks'])} cases from {len(shards)} shards into {out / 'merged.json'}")
    rc = 0
    base, base_run = None, None
    if a.compare:
        base = Path(a.compare)
        base_run = report.load(base) if base.is_file() else None
    elif a.compare_latest:
        base = Path(a.compare_latest)
        runs = report.saved_runs(base, "main") if base.is_dir() else []
        base_run = runs[-1] if runs else None
    if base is not None:
        if not base_run or not base_run.get("benchmarks"):
            text = report.no_baseline_message(str(base), "file not found or empty" if a.compare else
                                              "no saved main run there")
            rc = report.NO_BASELINE if a.fail_over is not None else 0
        else:
            text, regressed = report.compare(base_run, merged, a.fail_over)
            rc = 1 if regressed else 0
    else:
        text = report.summary(merged)
    (out / "report.md").write_text(text)
    print(text)
    if a.save:
        print(f"saved {save_to_storage(merged, a.save, Path(a.storage) if a.storage else None)}")
    if failed:
        print(f"shard(s) {failed} failed: see {out}/shard-<i>.log", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
