"""The package works installed as a wheel, outside the repository: profiles travel with it, and
provenance says "not a git checkout" instead of reading whatever repository surrounds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO


def test_wheel_installed_outside_the_repository_trains_and_predicts(isbi_dir, tmp_path):
    source = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ in the repository
    shutil.copytree(REPO / "paper_unet", source / "paper_unet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("paper_unet-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (site / "paper_unet" / "profiles" / "cpu.toml").is_file()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="2")

    def run(*args):
        return subprocess.run([sys.executable, str(site / "bin" / "paper-unet"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import paper_unet, paper_unet.reproduce as r; "
                            "print(paper_unet.__file__); print(r.provenance()['commit'])"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    location, commit = where.stdout.splitlines()
    assert location.startswith(str(site)) and commit.startswith("not a git checkout")
    done = run("train", "--profile", "smoke", "--data-dir", str(isbi_dir), "--out", "run", "--quiet",
               "--set", "optim.iterations=2")
    assert done.returncode == 0, done.stderr[-3000:]
    import tifffile
    tifffile.imwrite(work / "in.tif", tifffile.imread(isbi_dir / "test-volume.tif")[:2], photometric="minisblack")
    done = run("predict", "--checkpoint", "run/last.pt", "--input", "in.tif", "--output", "p.tif", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert tifffile.imread(work / "p.tif").shape == (2, 512, 512)
