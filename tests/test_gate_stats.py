"""The regression gate's statistic (benchmarks/gate_stats.py) on synthetic timings with known shifts, its report
(benchmarks/report.py --gate, --trend), and the injection's calibration logic (benchmarks/inject.py) against
synthetic devices. No timing of real work here: every clock is synthetic."""
from __future__ import annotations

import itertools
import json
import random
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_support as bs  # noqa: E402
import gate  # noqa: E402
import gate_stats as gs  # noqa: E402
import inject  # noqa: E402
import report  # noqa: E402

CALL_S = 0.75  # the fastest path's seed case on an H200
ROUNDS = 5


def side(rng: random.Random, shift: float, *, k: int = 3, rounds: int = ROUNDS, process_sd: float = 0.0007,
         round_sd: float = 0.0003, modes: list[float] | None = None) -> list[list[float]]:
    """k processes of `rounds` timings: CALL_S * (1 + shift) * process effect * round noise. modes: a fixed
    process-level offset per process (bimodal noise), added to the process' normal effect."""
    out = []
    for i in range(k):
        proc = rng.gauss(0, process_sd) + (modes[i] if modes else 0.0)
        out.append([CALL_S * (1 + shift) * (1 + proc) * (1 + rng.gauss(0, round_sd)) for _ in range(rounds)])
    return out


def verdicts(shift: float, n: int, **kw) -> list[str]:
    out = []
    for seed in range(n):
        rng = random.Random(f"{shift}:{seed}")
        base, head = side(rng, 0.0, **kw), side(rng, shift, **kw)
        out.append(gs.compare(base, head, resamples=2000, seed=seed).verdict)
    return out


# ------------------------------------------------------------------------------------------- known shifts
def test_no_shift_passes():
    assert verdicts(0.0, 12) == [gs.PASS] * 12


def test_one_percent_is_never_failed_as_more_than_two():
    v = verdicts(0.01, 12)
    assert gs.FAIL not in v and v.count(gs.PASS) == 12, v
    # nor with noisier processes (0.5 %): then the gate may say INCONCLUSIVE, never FAIL
    assert gs.FAIL not in verdicts(0.01, 12, process_sd=0.005)


def test_three_percent_with_realistic_noise_fails():
    # 0.15 % spread between processes (measured on one H200 runner: 0.7507-0.7518 s), 0.05 % between rounds
    v = verdicts(0.03, 12, process_sd=0.0005, round_sd=0.0005)
    assert v == [gs.FAIL] * 12, v


def test_ten_percent_fails_even_with_noisy_processes():
    assert verdicts(0.10, 12, process_sd=0.01) == [gs.FAIL] * 12


def test_estimate_and_interval_track_the_shift():
    rng = random.Random(7)
    for shift in (0.0, 0.01, 0.03, 0.10):
        c = gs.compare(side(rng, 0.0), side(rng, shift))
        assert c.low <= c.slowdown <= c.high
        assert abs(c.slowdown - shift) < 0.004, (shift, c)
        assert c.high - c.low < 0.01  # 0.07 % process noise: a narrow interval
        assert (c.base_processes, c.head_processes, c.base_rounds) == (3, 3, 3 * ROUNDS)


def test_bimodal_process_noise_without_a_shift_fails_only_when_every_head_process_is_slow_and_no_base_one():
    """Process-level modes (the same code decodes at 3.76 or 3.88 ms/step by process: docs/PERF.md, Noise): each of
    the 6 processes in the fast or the +3 % mode, no code change. Of the 64 assignments only one is read as a
    slowdown: all three head processes slow, all three base processes fast - the data cannot tell it from a real
    +3 %, and by chance it has probability 1/20 of the splits that mix the modes 3 to 3."""
    failed = []
    for assignment in itertools.product((0.0, 0.03), repeat=6):
        rng = random.Random(str(assignment))
        base = side(rng, 0.0, modes=list(assignment[:3]))
        head = side(rng, 0.0, modes=list(assignment[3:]))
        if gs.compare(base, head, resamples=4000).verdict == gs.FAIL:
            failed.append(assignment)
    assert failed == [(0.0, 0.0, 0.0, 0.03, 0.03, 0.03)]


def test_bimodal_noise_with_one_slow_process_is_not_failed_and_a_small_mode_passes():
    rng = random.Random(3)
    one_slow = gs.compare(side(rng, 0.0), side(rng, 0.0, modes=[0.0, 0.03, 0.0]))
    assert one_slow.verdict == gs.INCONCLUSIVE and abs(one_slow.slowdown) < 0.003
    small_mode = gs.compare(side(rng, 0.0, modes=[0.0, 0.013, 0.0]), side(rng, 0.0, modes=[0.013, 0.0, 0.0]))
    assert small_mode.verdict == gs.PASS


def test_at_the_threshold_the_gate_fails_at_most_about_one_in_twenty():
    """A true slowdown of exactly the minimum effect: FAIL needs every head process above every base process
    (shifted), chance 1/20 at 3 vs 3. Over 100 synthetic comparisons at most 1/20 + sampling slack fail."""
    v = verdicts(gs.DEFAULT_MIN_EFFECT, 100, round_sd=0.0)
    assert v.count(gs.FAIL) <= 9, v.count(gs.FAIL)
    assert v.count(gs.INCONCLUSIVE) >= 85


def test_the_interval_stays_within_the_range_of_process_ratios():
    """What the interval covers at k = 3: resampling cannot leave the observed process medians."""
    rng = random.Random(11)
    base = [[x] * ROUNDS for x in (0.750, 0.752, 0.755)]  # no round noise: the process medians are the values
    head = [[x] * ROUNDS for x in (0.770, 0.771, 0.780)]
    c = gs.compare(base, head)
    lo, hi = 0.770 / 0.755 - 1, 0.780 / 0.750 - 1
    assert lo - 1e-12 <= c.low <= c.slowdown <= c.high <= hi + 1e-12
    assert c.slowdown == pytest.approx(0.771 / 0.752 - 1)
    noisy = side(rng, 0.0, k=1)
    one = gs.compare(noisy, side(rng, 0.0, k=1))  # one process per side: round-to-round noise only
    assert one.high - one.low < 0.01 and one.base_processes == 1


def test_deterministic_and_seeded():
    rng = random.Random(5)
    base, head = side(rng, 0.0), side(rng, 0.02)
    assert gs.compare(base, head) == gs.compare(base, head)
    assert gs.bootstrap_slowdowns(base, head, resamples=500, seed="a") == \
        gs.bootstrap_slowdowns(base, head, resamples=500, seed="a")
    assert gs.bootstrap_slowdowns(base, head, resamples=500, seed="a") != \
        gs.bootstrap_slowdowns(base, head, resamples=500, seed="b")


def test_verdict_rules_and_bad_input():
    assert gs.verdict(0.021, 0.03) == gs.FAIL
    assert gs.verdict(0.02, 0.03) == gs.INCONCLUSIVE  # the interval touches the threshold: not above it
    assert gs.verdict(-0.01, 0.02) == gs.PASS  # at or below the threshold
    assert gs.verdict(-0.08, -0.05) == gs.PASS  # faster
    assert gs.verdict(0.01, 0.05, min_effect=0.05) == gs.PASS
    assert gs.worst([gs.PASS, gs.INCONCLUSIVE, gs.PASS]) == gs.INCONCLUSIVE
    assert gs.worst([gs.INCONCLUSIVE, gs.FAIL]) == gs.FAIL and gs.worst([]) == gs.PASS
    assert gs.EXIT_CODES == {gs.PASS: 0, gs.FAIL: 1, gs.INCONCLUSIVE: 3} and report.NO_BASELINE == 2
    with pytest.raises(ValueError, match="base: no process"):
        gs.compare([[]], [[1.0]])
    with pytest.raises(ValueError, match="positive and finite"):
        gs.compare([[1.0, -1.0]], [[1.0]])
    with pytest.raises(ValueError, match="confidence"):
        gs.compare([[1.0]], [[1.0]], confidence=99)


# ------------------------------------------------------------------------------------------- report --gate
def write_process(path: Path, rounds: dict[str, list[float]], *, gpu="NVIDIA H200", commit="abc",
                  injected: float | None = None) -> Path:
    path.write_text(json.dumps({
        "machine_info": {"llama_fast": {"gpu_name": gpu, "commit": commit, "injected_slowdown": injected}},
        "commit_info": {"id": commit}, "datetime": "2026-11-30T10:00:00",
        "benchmarks": [{"name": f"test_generate[{k}]", "fullname": f"benchmarks/test_generate.py::test_generate[{k}]",
                        "param": k, "stats": {"median": sorted(v)[len(v) // 2], "data": v},
                        "extra_info": {"tokens": 200}} for k, v in rounds.items()],
    }))
    return path


def gate_files(tmp_path: Path, shifts: dict[str, float], k: int = 3, process_sd: float = 0.0007,
               injected: float | None = None) -> tuple[list[str], list[str]]:
    """k process files per side; case "new" only in the head, "gone" only in the base."""
    rng = random.Random(1)
    base, head = [], []
    for i in range(k):
        base.append(str(write_process(tmp_path / f"base-{i}.json", {
            c: side(rng, 0.0, k=1, process_sd=process_sd)[0] for c in shifts if c != "new"})))
        head.append(str(write_process(tmp_path / f"head-{i}.json", {
            c: side(rng, s, k=1, process_sd=process_sd)[0] for c, s in shifts.items() if c != "gone"},
            commit="def", injected=injected)))
    return base, head


def test_report_gate_table_verdicts_and_exit_codes(tmp_path, capsys):
    base, head = gate_files(tmp_path, {"same": 0.0, "slow": 0.05, "new": 0.0, "gone": 0.0})
    out = tmp_path / "gate.md"
    assert report.main(["--gate", "--base", *base, "--head", *head, "--out", str(out)]) == 1
    text = out.read_text()
    assert "### llama_fast regression gate: NVIDIA H200" in text
    assert "| 99 % interval |" in text and "above +2 %" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["same"].endswith("| 3x5 / 3x5 | PASS |"), rows["same"]
    assert "**FAIL**" in rows["slow"] and "+5." in rows["slow"]
    assert "new (no baseline): not judged" in rows["new"] and "removed: not judged" in rows["gone"]
    assert "**FAIL**: 1 case(s) slower by more than 2 % with 99 % confidence: slow" in text
    # the same files, a 10 % minimum effect: PASS; only a straddling interval: INCONCLUSIVE (exit 3)
    assert report.main(["--gate", "--base", *base, "--head", *head, "--min-effect", "10"]) == 0
    assert "**PASS**: no case slower by more than 10 %" in capsys.readouterr().out
    (tmp_path / "edge").mkdir()
    base2, head2 = gate_files(tmp_path / "edge", {"edge": 0.02}, process_sd=0.01)
    assert report.main(["--gate", "--base", *base2, "--head", *head2]) == 3
    assert "**INCONCLUSIVE**" in capsys.readouterr().out


def test_report_gate_refuses_what_it_cannot_compare(tmp_path, capsys):
    base, head = gate_files(tmp_path, {"a": 0.0})
    other = str(write_process(tmp_path / "a10g.json", {"a": [1.0, 1.0]}, gpu="NVIDIA A10G"))
    assert report.main(["--gate", "--base", other, *base[1:], "--head", *head]) == report.NO_BASELINE
    assert "different GPU models" in capsys.readouterr().out
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    assert report.main(["--gate", "--base", str(empty), "--head", *head]) == report.NO_BASELINE
    with pytest.raises(SystemExit) as e:
        report.main(["--gate", "--base", str(tmp_path / "missing.json"), "--head", *head])
    assert e.value.code == 2
    (tmp_path / "i").mkdir()
    injected = gate_files(tmp_path / "i", {"a": 0.03}, injected=0.03)
    text, result = report.gate([report.load(f) for f in injected[0]], [report.load(f) for f in injected[1]],
                               order=["base-1", "head-1"])
    assert "TEST ONLY: the head's processes injected a +3 % slowdown" in text
    assert "run in this order: base-1, head-1" in text and result["verdict"] == gs.FAIL


def test_gate_schedule_interleaves_base_and_head():
    assert gate.schedule(3) == [("base", 1), ("head", 1), ("base", 2), ("head", 2), ("base", 3), ("head", 3)]


def test_gate_refuses_a_head_without_suite_and_fails_closed_without_a_base_suite(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gate.main(["--base", str(REPO), "--head", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "has no benchmarks/ suite" in capsys.readouterr().err
    rc = gate.main(["--base", str(tmp_path), "--head", str(REPO), "--out", str(tmp_path / "o")])
    assert rc == report.NO_BASELINE
    assert "NO BASELINE" in (tmp_path / "o" / "report.md").read_text()
    assert json.loads((tmp_path / "o" / "gate.json").read_text())["exit"] == 2


# ------------------------------------------------------------------------------------------- report --trend
def test_trend_plots_every_saved_main_run_in_order(tmp_path, capsys):
    store = tmp_path / "store" / "Linux-CPython-3.11-64bit"
    store.mkdir(parents=True)
    for i, (commit, tok) in enumerate([("c3", 250.0), ("c1", 265.0), ("c2", 260.0)]):
        p = write_process(store / f"{i + 1:04d}_main.json", {"seed": [200 / tok] * 3}, commit=commit)
        run = json.loads(p.read_text())
        run["datetime"] = f"2026-11-2{[3, 1, 2][i]}T10:00:00"  # saved out of order: sorted by datetime
        p.write_text(json.dumps(run))
    write_process(store / "0004_pr.json", {"seed": [1.0]}, commit="not-main")
    runs = report.saved_runs(tmp_path / "store")
    assert [report.commit_of(r) for r in runs] == ["c1", "c2", "c3"]
    png = tmp_path / "trend.png"
    assert report.main(["--trend", str(tmp_path / "store"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = capsys.readouterr().out
    assert "| seed | 265.0 | 260.0 | 250.0 | -3.8% |" in out and "`c1` | `c2` | `c3`" in out
    with pytest.raises(SystemExit) as e:
        report.main(["--trend", str(tmp_path / "store"), "--out", str(png), "--name", "nightly"])
    assert e.value.code == 2 and "no saved run NNNN_nightly.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- injection
RATE = inject.SleepRate(per_s=1.98e9, overhead_s=2e-6)  # an H200's SM clock, a launch gap


def test_fit_sleep_rate_recovers_the_line():
    samples = [(u, 3e-6 + u / 1.9e9) for u in (1_000_000, 20_000_000) for _ in range(3)]
    r = inject.fit_sleep_rate(samples)
    assert r.per_s == pytest.approx(1.9e9) and r.overhead_s == pytest.approx(3e-6)
    with pytest.raises(ValueError, match="two sizes"):
        inject.fit_sleep_rate([(5, 1.0), (5, 1.1)])
    with pytest.raises(ValueError, match="do not grow"):
        inject.fit_sleep_rate([(1, 2.0), (2, 1.0)])


def test_initial_units_spread_the_fraction_of_the_whole_call_over_the_decode_steps():
    # 3 % of a 0.75 s call (prefill included) over 199 decode steps: 113.07 us per step, 2 us of it overhead
    assert inject.initial_units(0.03, 0.75, 199, RATE) == round((0.03 * 0.75 / 199 - 2e-6) * 1.98e9)
    assert inject.initial_units(0.0, 0.75, 199, RATE) == 0
    assert inject.initial_units(1e-6, 0.75, 199, RATE) == 0  # less than the overhead: nothing to sleep
    with pytest.raises(ValueError):
        inject.initial_units(0.03, 0.75, 0, RATE)


def test_next_units_is_a_secant_step_capped_and_never_negative():
    wanted = 100e-6
    assert inject.next_units([(200_000, 50e-6)], wanted, RATE) == round(200_000 + 50e-6 * 1.98e9)
    # two points: the measured slope (the device shows half of each unit) is used
    assert inject.next_units([(100_000, 20e-6), (200_000, 45e-6)], wanted, RATE) == 420_000
    assert inject.next_units([(100_000, 1e-9)], 1.0, RATE) == 400_000  # capped at 4x
    assert inject.next_units([(100_000, 500e-6)], wanted, RATE) == 0


def device(call_s: float, steps: int, *, clock: float = 1.0, hidden_s: float = 0.0, overhead_s: float = 2e-6,
           noise: float = 0.0, seed: int = 0):
    """A synthetic device: measure(units) -> call seconds. clock: the clock under load against the calibrated one
    (0.9: cycles take 11 % longer); hidden_s: per step, the part of a sleep hidden behind host gaps."""
    rng = random.Random(seed)

    def measure(units: int) -> float:
        per_step = max(0.0, overhead_s + units / (RATE.per_s * clock) - hidden_s) if units > 0 else 0.0
        return (call_s + steps * per_step) * (1 + rng.uniform(-noise, noise))

    def true_slowdown(units: int) -> float:
        return steps * (max(0.0, overhead_s + units / (RATE.per_s * clock) - hidden_s) if units else 0) / call_s

    return measure, true_slowdown


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.05, 0.10])
@pytest.mark.parametrize("model", ["exact", "slow-clock", "hidden", "noisy"])
def test_calibration_lands_within_half_a_point(fraction, model):
    kw = {"exact": {}, "slow-clock": {"clock": 0.9}, "hidden": {"hidden_s": 20e-6},
          "noisy": {"noise": 0.0003, "clock": 0.95}}[model]
    measure, true_slowdown = device(CALL_S, 199, **kw)
    cal = inject.calibrate(fraction, CALL_S, 199, RATE, measure)
    assert abs(true_slowdown(cal.units) - fraction) <= 0.005, cal  # the issue's +/-0.5 point
    assert abs(cal.measured - fraction) <= inject.TOLERANCE + 0.0006, cal
    assert 1 <= len(cal.tried) <= inject.MAX_CORRECTIONS + 1
    if model == "exact":
        assert len(cal.tried) == 1  # the rate's estimate is right: no correction


def test_calibration_keeps_the_closest_attempt():
    seq = iter([CALL_S * 1.05, CALL_S * 1.031, CALL_S * 1.2, CALL_S * 1.0])  # a wild measurement after a good one
    cal = inject.calibrate(0.03, CALL_S, 199, RATE, lambda u: next(seq), tolerance=1e-4, max_corrections=3)
    assert cal.measured == pytest.approx(0.031) and cal.units == cal.tried[1][0] and len(cal.tried) == 4


def test_install_on_cpu_sleeps_the_host_after_each_step(monkeypatch):
    """inject.install end to end on the CPU path with a synthetic clock: a 'generate' of 20 steps of 1 ms calls
    step_hook after each of its 19 decode steps; +50 % must come out as 19 host sleeps of ~0.53 ms."""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s + 40e-6))  # 40 us wake-up

    class Fast:
        step_hook = None

    fast = Fast()

    def call():
        clock[0] += 1e-3  # prefill + first token
        for _ in range(19):
            clock[0] += 1e-3
            if fast.step_hook is not None:
                fast.step_hook()

    import torch

    cal, kind = inject.install(fast, call, 0.5, 19, torch.device("cpu"))
    assert kind.startswith("host sleep")
    assert cal.rate.overhead_s == pytest.approx(40e-6) and cal.rate.per_s == pytest.approx(1e9)
    assert cal.measured == pytest.approx(0.5, abs=1e-6) and len(cal.tried) == 1
    assert fast.step_hook is not None
    clock[0] = 0.0
    call()
    assert clock[0] == pytest.approx(0.030, rel=1e-6)  # 20 ms of work + 50 %


def test_transformers_stays_beside_ours_only_with_room_to_spare():
    gb = 1_000_000_000
    assert bs.transformers_may_stay(141 * gb, 13.5 * gb, 25 * gb)  # H200, batch 16
    assert not bs.transformers_may_stay(24 * gb, 13.5 * gb, 14.4 * gb)  # A10G: parked, as before
    assert not bs.transformers_may_stay(30 * gb, 13.5 * gb, 14.4 * gb)  # less than the headroom left
