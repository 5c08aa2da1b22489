"""Provenance (`paper_unet.provenance`): the commit, the machine and its class, the software, the time."""

from __future__ import annotations

import paper_unet.provenance as provenance_module
from paper_unet.provenance import machine, provenance


def test_provenance_names_commit_machine_and_software():
    p = provenance("a command")
    assert p["command"] == "a command" and len(p["commit"]) == 40 and isinstance(p["dirty"], bool)
    assert p["cpu_class"] and p["torch"] and p["python"] and p["date_utc"].startswith("20")


def test_an_installed_package_is_not_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance_module, "REPO", tmp_path)  # a site-packages folder inside some repository
    p = provenance()
    assert p["commit"].startswith("not a git checkout") and p["dirty"] is False


def test_machine_says_cpu_class_and_threads_or_the_gpu():
    assert machine({"cpu": "AMD EPYC", "cpu_class": "AVX2", "torch_threads": 2, "gpu": None}) == \
        "AMD EPYC (AVX2 CPU), 2 threads"
    assert machine({"gpu": "NVIDIA H100 80GB HBM3", "cuda": "13.0", "cpu": "Intel Xeon"}) == \
        "NVIDIA H100 80GB HBM3 (CUDA 13.0)"
