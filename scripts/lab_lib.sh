# Shell helpers sourced by the lab scripts (scripts/lab_run*.sh, seventh session on); each writes under $OUT.
# Earlier scripts spell the same steps out: they are records of runs already made.

# Sample SM clock, temperature, power and throttle reasons every 200 ms into $OUT/smi.csv, in the background.
clocks_start() {
  nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active \
    --format=csv,noheader -lms 200 > $OUT/smi.csv 2>&1 &
  SMI=$!
}

# Stop the sampling; SM clock histogram (20 MHz bins) of the samples over 400 W, i.e. while the GPU was busy.
clocks_summary() {
  kill $SMI
  awk -F', ' '$4+0 > 400 {n++; s[int($2/20)*20]++} END {for (k in s) print "SM ~" k ": " s[k] " samples"; print n " samples over 400 W"}' $OUT/smi.csv
}

# judged_compares N: the judged table (run_llama.py --compare at the seed workload) in N processes, one after another.
judged_compares() {
  for i in $(seq 1 $1); do
    timeout 170 python run_llama.py --model random:llama-7b --compare --output $OUT/compare$i.csv > $OUT/compare$i.log 2>&1
    echo "compare $i rc=$?"; grep "^model\|^roofline\|^|" $OUT/compare$i.log | cut -c1-200
  done
}

# config_trials VARIANT SET [SECONDS]: perf_lab's trial set SET on VARIANT in one process (default limit 280 s).
config_trials() {
  timeout ${3:-280} python scripts/perf_lab.py --variants $1 --breakdown --config-trials $1 --trial-set $2 \
    --log $OUT/trials.log > $OUT/trials.out 2>&1; echo "trials rc=$?"
  grep -h "prefill .* ms\|tok/s (best\|# roofline\|trial" $OUT/trials.log | cut -c1-200
  tail -3 $OUT/trials.out
}
