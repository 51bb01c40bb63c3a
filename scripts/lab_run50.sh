#!/usr/bin/env bash
# Sixth session, seventh call. Run 49: a third speed level (3.76 ms/step in three processes on one host), and
# remaking the KV caches at new addresses never moved a process's speed. Suspect the SM clock: the latency-bound
# attention kernel would follow it, the bandwidth-bound GEMVs would not (run 40: only attention moved). Sample
# the clocks every 100 ms while processes run: plain, right after a 40 s matmul burn, after 30 s idle.
export PYTHONPATH=.:scripts PYTHONUNBUFFERED=1 LLAMA_FAST_COMMIT=${LLAMA_FAST_COMMIT:-unknown}
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_event_reasons.active \
  --format=csv,noheader -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
lab() {
  echo "### $1 start $(date +%T.%N | cut -c1-12)"
  timeout 120 python scripts/perf_lab.py --variants fused-prefill-graph --runs 3 --breakdown 2>/dev/null \
    | grep "prefill .* ms\|tok/s (best\|# roofline" | cut -c1-200
  echo "### $1 end $(date +%T.%N | cut -c1-12)"
}
lab "process 1 (plain)"
echo "### burn start $(date +%T.%N | cut -c1-12)"
python -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda', dtype=torch.float16); t = time.time()
while time.time() - t < 40:
    for _ in range(50): a @ a
    torch.cuda.synchronize()"
lab "process 2 (after burn)"
sleep 30
lab "process 3 (after 30 s idle)"
kill $SMI
python - <<'PY'
import csv, os, re, statistics
rows = [r for r in csv.reader(open(os.environ["OUT"] + "/smi.csv")) if len(r) >= 6]
def num(x):
    m = re.search(r"[\d.]+", x); return float(m.group()) if m else float("nan")
sm = [num(r[1]) for r in rows]; print(f"{len(rows)} samples; SM clock MHz min {min(sm):.0f} median {statistics.median(sm):.0f} max {max(sm):.0f}")
from collections import Counter
print("event reasons:", Counter(r[5].strip() for r in rows).most_common(6))
PY
