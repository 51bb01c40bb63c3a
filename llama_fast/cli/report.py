"""What a run leaves behind: CSV rows (appended as each point finishes), the markdown tables, a sample of the
generated text and, for --sweep, a bar chart.

A row's quantize column: the weights' scheme (llama_fast.quant: int8, int4:g128, ...; a transformers row with a
scheme ran the same weights dequantized), or none.

A row's status: ok; OOM (the point ran out of memory: no numbers); fallback (the variant names CUDA-only code,
CUDA graphs, Triton kernels or PDL, and ran its fallback on this device: harness.fallback_reason);
nondeterministic (the timed runs of one process generated different tokens from the same prompt: a race in a
kernel or a collective, never noise, since the same work repeats on the same inputs). In the
tables a fallback row's tok_per_s carries FALLBACK_MARK and a note under the table says what did not run.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import harness

if TYPE_CHECKING:
    from .args import Plan
    from .runner import BenchmarkRun, Result

CSV_COLUMNS = ["timestamp", "commit", "mode", "model", "device", "dtype", "variant", "changes", "compile",
               "batch", "prompt_len", "new_tokens", "cache_length", "tok_per_s", "tok_per_s_best", "max_mem_mb",
               "warmup_s", "roofline_pct", "hash", "status", "sampling", "quantize", "tp"]
SAMPLE_CHARS = 200
FALLBACK_MARK = "(fallback)"


# ------------------------------------------------------------------------------------------- CSV
def check_csv(path: Path):
    """Refuse an --output that is not a file, or a CSV whose header is not CSV_COLUMNS (ValueError)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"--output {path} exists and is not a file")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            raise ValueError(f"--output {path} has other columns than this version writes "
                             f"({','.join(header[:4])},...); choose another file")


def csv_row(run: BenchmarkRun, r: Result) -> dict:
    p, m, w = run.plan, r.measurement, r.workload
    row = dict(timestamp=run.timestamp, commit=p.commit, mode=p.mode, model=p.args.model,
               device=run.device_label, dtype=p.dtype_name, variant=r.variant.key, changes=r.variant.label,
               compile=r.variant.compile, batch=w.batch, prompt_len=w.prompt_len, new_tokens=w.new_tokens,
               cache_length=w.cache, status=r.status, sampling=w.pick, quantize=r.variant.quantize or "none", tp=p.tp)
    if m is not None:
        row.update(tok_per_s=f"{m.tok_per_s:.3f}", tok_per_s_best=f"{m.tok_per_s_best:.3f}",
                   max_mem_mb=f"{m.max_mem_mb:.1f}", warmup_s=f"{m.warmup_s:.3f}", hash=m.hash)
        if r.roofline_pct is not None:
            row["roofline_pct"] = f"{r.roofline_pct:.1f}"
    return row


def append_row(path: Path, row: dict):
    """Append one complete line (with the header when the file is new or empty) in a single os.write
    on an O_APPEND descriptor, under an exclusive lock: a killed run never leaves half a row and two
    concurrent runs never write the header twice."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    line = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: the single write is still all-or-nothing for one process
            pass
        if os.fstat(fd).st_size == 0:
            line = ",".join(CSV_COLUMNS) + "\n" + line
        data = line.encode()
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - a short write on a regular file means the disk is full
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- tables
def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _tok_per_s(r: Result) -> str:
    """The median tok/s cell: OOM, or the number with FALLBACK_MARK on a fallback row."""
    m = r.measurement
    if m is None:
        return "OOM"
    return f"{_fmt(m.tok_per_s)} {FALLBACK_MARK}" if r.fallback else _fmt(m.tok_per_s)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def header_line(plan: Plan, w: harness.Workload) -> str:
    weights = f" | {plan.quantize} weights" if plan.quantize else ""
    return (f"model {plan.args.model} | batch {w.batch} | prompt {w.prompt_len} | new tokens {w.new_tokens} | "
            f"cache length {w.cache} | {plan.dtype_name} | {harness.device_name(plan.device)} | {w.pick}{weights}")


def _ablation_table(run: BenchmarkRun, i: int) -> str:
    plan = run.plan
    rows = []
    for v in plan.variants:
        r = run.results[(v.key, i)]
        m = r.measurement
        rows.append([v.label, v.compile, _tok_per_s(r), _fmt(m.max_mem_mb) if m else "-", m.hash if m else "-",
                     plan.commit])
    return _table(["changes", "compile", "tok_per_s", "max_mem_mb", "hash", "commit"], rows)


def _compare_table(run: BenchmarkRun, i: int, w: harness.Workload) -> str:
    plan = run.plan
    ref = run.results[("hf-static", i)].measurement
    c = run.ceilings
    roofs = {}  # the roofline of each weight scheme of the llama_fast rows (transformers: the model dtype)
    for q in [None] + [v.roofline_quantize for v in plan.variants]:
        if q not in roofs:
            roofs[q] = harness.roofline_tok_per_s(plan.cfg, plan.dtype, w, c, q)
    names = {k: f"llama_fast ({k})" for k in harness.VARIANTS}
    names.update({harness.FASTEST: "llama_fast (fastest)", "hf": "transformers default",
                  "hf-static": "transformers static cache"})
    rows = []
    for v in plan.variants:
        r = run.results[(v.key, i)]
        m = r.measurement
        given = v.quantize is not None and v.quantize != harness.VARIANTS[v.key].quantize  # by --quantize
        name = f"{names[v.key]}, {v.quantize}" if given else names[v.key]
        if m is None:
            rows.append([name, v.key, "OOM", "-", "-", "-", "-", "-", "-"])
            continue
        ratio = f"{m.tok_per_s / ref.tok_per_s:.2f}x" if ref is not None else "-"
        rows.append([name, v.key, _tok_per_s(r), _fmt(m.tok_per_s_best), _fmt(r.roofline_pct),
                     _fmt(m.max_mem_mb), _fmt(m.warmup_s, 2), m.hash, ratio])
    quantized = "".join(f"; {q} weights {roof:.1f} tok/s" for q, roof in roofs.items() if q is not None)
    return "\n".join([f"roofline {roofs[None]:.1f} tok/s{quantized} (measured now: matmul "
                      f"{c.matmul_flops / 1e12:.2f} TFLOP/s, copy {c.copy_bytes / 1e9:.1f} GB/s)", "",
                      _table(["implementation", "variant", "tok_per_s", "tok_per_s_best", "% roofline",
                              "max_mem_mb", "warmup_s", "hash", "vs hf-static"], rows)])


def _run_table(run: BenchmarkRun, i: int) -> str:
    rows = []
    for v in run.plan.variants:
        r = run.results[(v.key, i)]
        m = r.measurement
        rows.append([v.key, v.label, v.compile, _fmt(m.tok_per_s) if m else "OOM",
                     _fmt(m.tok_per_s_best) if m else "-", _fmt(m.max_mem_mb) if m else "-",
                     _fmt(m.warmup_s, 2) if m else "-", m.hash if m else "-", r.status])
    return _table(["variant", "changes", "compile", "tok_per_s", "tok_per_s_best", "max_mem_mb", "warmup_s",
                   "hash", "status"], rows)


def _fallback_notes(run: BenchmarkRun, i: int) -> list[str]:
    """One line per fallback row of point i: which variant, and what of its code path did not run."""
    results = [run.results[(v.key, i)] for v in run.plan.variants]
    return [f"{FALLBACK_MARK} {r.variant.key}: {r.fallback}" for r in results if r.fallback]


def tables(run: BenchmarkRun) -> str:
    """The markdown report: per point its header line, the mode's table and the notes on fallback rows."""
    plan = run.plan
    out = []
    for i, w in enumerate(plan.points):
        out += [header_line(plan, w), ""]
        if plan.mode == "ablation":
            out.append(_ablation_table(run, i))
        elif plan.mode == "compare":
            out.append(_compare_table(run, i, w))
        else:
            out.append(_run_table(run, i))
        notes = _fallback_notes(run, i)
        if notes:
            out += [""] + notes
        out.append("")
    return "\n".join(out)


def sample_text(run: BenchmarkRun) -> str | None:
    """The decoded first row of the last successful run: the whole text for --prompt, else its last
    SAMPLE_CHARS characters."""
    last = [r for r in run.results.values() if r.measurement is not None]
    if not last:
        return None
    m = last[-1].measurement
    text = run.plan.tokenizer.decode(m.output_ids[0], skip_special_tokens=True)
    if run.plan.args.prompt is not None:
        return f"generated text ({m.variant.key}, first row):\n{text}"
    tail = text[-SAMPLE_CHARS:]
    return f"sample output ({m.variant.key}, first row, last {len(tail)} chars):\n...{tail}"


# ------------------------------------------------------------------------------------------- chart
def new_chart_file(directory: Path, stem: str):
    """(path, open binary file) of the first free name of stem.png, stem_2.png, stem_3.png, ... in directory.

    The name is claimed by an exclusive create, so an earlier chart (or one a concurrent run is writing) is
    never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = directory / (f"{stem}.png" if n == 1 else f"{stem}_{n}.png")
        try:
            return path, open(path, "xb")
        except FileExistsError:
            n += 1


def sweep_chart(run: BenchmarkRun) -> Path:
    """Grouped bars: tok/s per variant at each sweep point (OOM points marked), written to a new
    llama_sweep_<commit>_<sweep>[_N].png next to the CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = run.plan
    xs = [f"b={w.batch}" if plan.args.sweep == "batch" else f"p={w.prompt_len}" for w in plan.points]
    if len({(w.batch, w.prompt_len) for w in plan.points}) != len(set(xs)):  # several of the other dimension
        xs = [f"b={w.batch} p={w.prompt_len}" for w in plan.points]
    n = len(plan.variants)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(xs) * max(1, n / 3)), 4.5))
    for j, v in enumerate(plan.variants):
        heights, ooms = [], []
        for i in range(len(plan.points)):
            m = run.results[(v.key, i)].measurement
            heights.append(m.tok_per_s if m else 0.0)
            ooms.append(m is None)
        pos = [i + (j - (n - 1) / 2) * width for i in range(len(xs))]
        fallback = any(run.results[(v.key, i)].fallback for i in range(len(plan.points)))
        ax.bar(pos, heights, width, label=f"{v.key} {FALLBACK_MARK}" if fallback else v.key)
        for x, oom in zip(pos, ooms):
            if oom:
                ax.text(x, 0, "OOM", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_ylabel("tok/s (median)")
    ax.set_title(f"{plan.args.model} {plan.dtype_name} on {run.device_label} ({plan.commit})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path, f = new_chart_file(plan.output.parent, f"llama_sweep_{plan.commit}_{plan.args.sweep}")
    try:
        with f:
            fig.savefig(f, format="png", dpi=120)
    except BaseException:
        path.unlink(missing_ok=True)  # no empty chart left claiming the name
        raise
    finally:
        plt.close(fig)
    return path
