#!/usr/bin/env bash
# Sixth session, twelfth call: clocks sampled (every 50 ms) while two perf_lab processes decode, summarised per
# process: if a process decodes in the slow mode (3.87-3.88 ms/step), was its SM clock below the 1980 MHz that
# run 50's fast host held?
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 50 > $OUT/smi.csv 2>&1 &
SMI=$!
for i in 1 2; do
  echo "### process $i start $(date +%H:%M:%S.%N | cut -c1-12)"
  timeout 120 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown 2>/dev/null \
    | grep "prefill .* ms\|tok/s (best\|# roofline" | cut -c1-200
  echo "### process $i end $(date +%H:%M:%S.%N | cut -c1-12)"
done 2>&1 | tee $OUT/procs.txt
kill $SMI
python - <<'PY'
import collections, csv, os, re, statistics
out = os.environ["OUT"]
rows = [r for r in csv.reader(open(out + "/smi.csv")) if len(r) >= 6]
win = re.findall(r"### process (\d) (start|end) ([\d:.]+)", open(out + "/procs.txt").read())
spans = {}
for p, kind, t in win:
    spans.setdefault(p, {})[kind] = t
for p, s in spans.items():
    sel = [r for r in rows if s["start"] <= r[0].split()[-1] <= s["end"] and float(r[4].split()[0]) > 300]
    if not sel:
        print(f"process {p}: no busy samples"); continue
    sm = [float(r[1].split()[0]) for r in sel]
    print(f"process {p}: {len(sel)} busy samples (>300 W): SM MHz median {statistics.median(sm):.0f} min {min(sm):.0f}, "
          f"power median {statistics.median(float(r[4].split()[0]) for r in sel):.0f} W, temp max "
          f"{max(float(r[3]) for r in sel):.0f} C, reasons {collections.Counter(r[5].strip() for r in sel).most_common(3)}")
PY
