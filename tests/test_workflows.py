"""The GitHub workflows run what the docs say: the CPU job runs the README's test command (or .ci/run's when
there is no README), the GPU job runs the documented benchmark save/compare commands."""
from __future__ import annotations

import re
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


def test_gpu_workflow_saves_and_compares_as_documented():
    wf = load("gpu-bench.yml")
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    (job,) = wf["jobs"].values()
    labels = job["runs-on"]
    assert {"self-hosted", "linux", "gpu"} <= set(labels)
    env = _env(wf, job)
    cmds = [_expand(r, env) for r in runs(wf)]
    bench = [c for c in cmds if "pytest benchmarks/" in c]
    assert any("--benchmark-save=main" in c for c in bench), "push to main must save the baseline"
    base = [c for c in bench if "--benchmark-save=base" in c]
    head = [c for c in bench if "--benchmark-compare" in c]
    assert base and head, "pull requests must benchmark the merge base and the head"
    assert "--benchmark-compare-fail=median:5%" in head[0]
    assert any("git merge-base" in c for c in cmds) and any("git worktree add" in c for c in cmds)
    # same storage for both runs, and the head compares against the base's save
    storage = re.findall(r"--benchmark-storage=(\S+)", base[0] + " " + head[0])
    assert len(storage) == 2 and storage[0] == storage[1]
    assert any("benchmarks/report.py" in c and "GITHUB_STEP_SUMMARY" in c for c in cmds)
    uploads = [s for s in steps(wf) if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0].get("if") == "always()"
    assert all("-p no:xdist" in c for c in bench), "pytest-benchmark switches itself off under xdist"
    assert "docs/PERF.md" in (WORKFLOWS / "gpu-bench.yml").read_text()


def test_documented_commands_are_the_ones_the_workflow_uses():
    doc = (REPO / "docs" / "BENCHMARKS.md").read_text()
    assert "pytest benchmarks/ --benchmark-save=main" in doc
    assert "pytest benchmarks/ --benchmark-compare --benchmark-compare-fail=median:5%" in doc
    threshold = load("gpu-bench.yml")["env"]["BENCH_FAIL"]
    assert f"--benchmark-compare-fail={threshold}" in doc
    for script in ("benchmarks/report.py", "benchmarks/shard.py", "--bench-update-hashes", "--bench-shard"):
        assert script in doc
