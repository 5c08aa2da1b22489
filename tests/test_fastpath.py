"""The fast path chosen per machine (paper_unet/fastpath.py): bf16 and channels_last per CPU class.

The decision is a pure function of (device type, CPU capability): every branch is checked on
hand-built CPU descriptions, so the rule is tested on any machine. On the machine running the tests,
`auto` is then held against the timing helper: it must never pick a path measured slower than fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from paper_unet.config import config_from_dict, load_config, profiles
from paper_unet.estimate import time_step
from paper_unet.fastpath import CpuInfo, cpu_info, decide, resolve

AVX2 = CpuInfo("AMD EPYC 7B13", "AVX2", avx512_bf16=False, amx=False)
AVX512 = CpuInfo("Intel Xeon Gold 6148", "AVX512", avx512_bf16=False, amx=False)
AVX512_BF16 = CpuInfo("AMD EPYC 9B14", "AVX512", avx512_bf16=True, amx=False)
AMX = CpuInfo("Intel Xeon Platinum 8480+", "AVX512", avx512_bf16=True, amx=True)

# --- the decision: a pure function, every branch -------------------------------------------------

def test_a_cpu_with_native_bf16_takes_bf16_and_channels_last():
    for cpu, name in ((AVX512_BF16, "AVX512-BF16"), (AMX, "AMX")):
        assert cpu.native_bf16 and cpu.cpu_class == name
        bf16, channels_last, why = decide("cpu", cpu)
        assert (bf16, channels_last) == (True, True) and why.startswith(f"{name} CPU, native bf16")

def test_an_avx2_cpu_takes_plain_fp32():
    assert not AVX2.native_bf16 and AVX2.cpu_class == "AVX2"
    bf16, channels_last, why = decide("cpu", AVX2)
    assert (bf16, channels_last) == (False, False)
    assert why.startswith("AVX2 CPU, no native bf16") and "slower than fp32" in why

def test_an_avx512_cpu_without_bf16_takes_plain_fp32():
    assert not AVX512.native_bf16 and AVX512.cpu_class == "AVX-512 without bf16"
    assert decide("cpu", AVX512)[:2] == (False, False)
    assert "not measured" in decide("cpu", AVX512)[2]

def test_restricting_aten_or_onednn_takes_native_bf16_away():
    """What ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 do to an AVX512-BF16 CPU: either limit alone
    already leaves bf16 without native kernels (convolutions run in oneDNN, the rest in ATen)."""
    aten_limited = CpuInfo("AMD EPYC 9B14", "AVX2", avx512_bf16=True, amx=False)
    assert not aten_limited.native_bf16 and aten_limited.cpu_class == "AVX2"
    assert "lowered by ATen capability AVX2" in aten_limited.describe()
    onednn_limited = CpuInfo("AMD EPYC 9B14", "AVX512", avx512_bf16=True, amx=False, onednn_max_isa="AVX2")
    assert not onednn_limited.native_bf16
    assert onednn_limited.cpu_class == "AVX-512 (oneDNN limited below bf16)"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in onednn_limited.describe()
    for isa in ("AVX512_CORE_BF16", "avx512_core_amx", "ALL"):  # limits at or above bf16 keep it
        assert CpuInfo("x", "AVX512", avx512_bf16=True, amx=False, onednn_max_isa=isa).native_bf16, isa
    assert not CpuInfo("x", "AVX512", avx512_bf16=True, amx=False, onednn_max_isa="AVX512_CORE").native_bf16
    for cpu in (aten_limited, onednn_limited):
        assert decide("cpu", cpu)[:2] == (False, False)

def test_cuda_and_other_devices_take_fp32():
    assert decide("cuda")[:2] == (False, False) and "H100" in decide("cuda")[2]
    assert decide("cuda", AMX)[:2] == (False, False)  # the host CPU does not matter on a GPU
    assert decide("mps")[:2] == (False, False)
    with pytest.raises(ValueError, match="capability"):
        decide("cpu", None)

def test_resolve_auto_follows_the_decision_and_says_why():
    path = resolve("auto", "auto", "cpu", AVX2)
    assert (path.bf16, path.channels_last) == (False, False)
    assert path.describe() == ("bf16 autocast: auto -> off, channels_last: auto -> off (" + decide("cpu", AVX2)[2] + ")")
    path = resolve("auto", "auto", "cpu", AVX512_BF16)
    assert (path.bf16, path.channels_last) == (True, True)
    assert path.describe().startswith("bf16 autocast: auto -> on, channels_last: auto -> on (AVX512-BF16 CPU")
    record = path.as_dict()
    assert record["cpu"]["cpu_class"] == "AVX512-BF16" and record["cpu"]["native_bf16"] is True
    assert record["summary"] == path.describe() and json.loads(json.dumps(record)) == record

def test_forcing_still_works_and_a_slow_forced_path_is_flagged():
    path = resolve(True, True, "cpu", AVX2)  # the tests that train bf16 on purpose
    assert (path.bf16, path.channels_last) == (True, True)
    assert "set in the config" in path.why and "WARNING" in path.why
    path = resolve(False, "auto", "cpu", AVX512_BF16)
    assert (path.bf16, path.channels_last) == (False, True)
    assert path.describe().startswith("bf16 autocast: false -> off, channels_last: auto -> on")
    assert "WARNING" not in resolve(True, True, "cpu", AMX).why
    assert resolve(True, False, "cuda").bf16 and resolve(True, False, "cuda").cpu is None

# --- this machine ---------------------------------------------------------------------------------

def test_cpu_info_reads_pytorchs_own_queries(monkeypatch):
    info = cpu_info()
    assert info.aten == torch.backends.cpu.get_cpu_capability()
    assert info.avx512_bf16 == torch.cpu._is_avx512_bf16_supported()
    assert info.amx == torch.cpu._is_amx_tile_supported()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_info().onednn_max_isa == "AVX2" and not cpu_info().native_bf16

def test_lowering_atens_capability_lowers_the_class():
    code = "from paper_unet.fastpath import cpu_info; i = cpu_info(); print(i.aten, i.native_bf16, i.cpu_class)"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["DEFAULT", "False", "DEFAULT"]

def test_the_profiles_default_to_auto_and_the_config_checks_the_value():
    for name in profiles():
        run = load_config(name).run
        assert run.bf16 == "auto" and run.channels_last == "auto" and not run.compile, name
    assert load_config("cpu", ["run.bf16=true", "run.channels_last=false"]).run.bf16 is True
    assert load_config("cpu", ["run.bf16=auto"]).run.bf16 == "auto"
    for bad in ("run.bf16=1", 'run.bf16="fast"', "run.channels_last=0"):
        with pytest.raises(ValueError, match="must be auto, true or false"):
            load_config("smoke", [bad])

def _isbi_train(isbi_dir):
    import tifffile
    return tifffile.imread(isbi_dir / "train-volume.tif"), tifffile.imread(isbi_dir / "train-labels.tif")

@pytest.mark.perf
def test_auto_never_picks_a_path_measured_slower_than_fp32_here(isbi_dir):
    """A decision test: the `cpu` profile's network and tile, timed by the helper the estimate and
    bench_train.py use. Where auto is fp32 itself (an AVX2 CPU) nothing is to compare; where it is
    bf16 + channels_last (native bf16; results/measurements.json) that path must be at least as fast. Each path is
    timed three times, alternating, and the fastest of each is compared (two-step timings on a shared
    2-core machine vary by 30 %)."""
    config = load_config("cpu")
    path = resolve(config.run.bf16, config.run.channels_last, "cpu")
    if (path.bf16, path.channels_last) == (False, False):
        assert not cpu_info().native_bf16, path.describe()
        return
    images, labels = _isbi_train(isbi_dir)
    times = {"fp32": [], "auto": []}
    for _ in range(3):
        times["fp32"].append(time_step(config, images[:4], labels[:4], "cpu", bf16=False, channels_last=False,
                                       steps=2))
        times["auto"].append(time_step(config, images[:4], labels[:4], "cpu", bf16=path.bf16,
                                       channels_last=path.channels_last, steps=2))
    print(f"{path.describe()}: {times}")
    assert min(times["auto"]) <= 1.1 * min(times["fp32"]), path.describe()

@pytest.mark.perf
def test_auto_picks_the_fastest_of_the_four_cpu_paths_here(isbi_dir):
    """Slow where bf16 has no native kernels (a bf16 step of the `cpu` network takes ~11 s on AVX2)."""
    config = load_config("cpu")
    images, labels = _isbi_train(isbi_dir)
    path = resolve("auto", "auto", "cpu")
    times = {(b, c): min(time_step(config, images[:4], labels[:4], "cpu", bf16=b, channels_last=c, steps=2)
                         for _ in range(2))
             for b in (False, True) for c in (False, True)}
    print(path.describe(), times)
    assert times[(path.bf16, path.channels_last)] <= 1.2 * min(times.values())

# --- the run records its path ---------------------------------------------------------------------

def test_a_training_run_records_the_path_it_took(tmp_path, isbi_dir):
    from paper_unet.train import load_checkpoint, train

    images, labels = _isbi_train(isbi_dir)
    values = load_config("smoke").to_dict()
    values["optim"]["iterations"] = 2
    values["run"].update(checkpoint_every=2, validate_every=2)
    train(config_from_dict(values), images[:2], labels[:2], tmp_path / "auto", progress=False)
    expected = resolve("auto", "auto", "cpu")
    record = json.loads((tmp_path / "auto" / "fast_path.json").read_text())
    assert record["summary"] == expected.describe() and record["asked_bf16"] == "auto"
    assert load_checkpoint(tmp_path / "auto" / "last.pt")["fast_path"] == record
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["run"]["bf16"] == "auto"
    values["run"].update(bf16=True, channels_last=False)  # forced: trains bf16 on any CPU
    train(config_from_dict(values), images[:2], labels[:2], tmp_path / "forced", progress=False)
    forced = json.loads((tmp_path / "forced" / "fast_path.json").read_text())
    assert forced["bf16"] is True and forced["channels_last"] is False and forced["asked_bf16"] is True
