"""The fast path: bf16 autocast and channels_last memory order, chosen per machine.

Neither changes the method (the paper trained in fp32 with Caffe); both only change how fast a
training step runs, and that depends on the hardware. Measured with `bench_train.py` (the figures:
results/measurements.json, read by `measurements`; the tables: results/performance.md), one training step
at a 572 -> 388 tile on 2 CPU cores or one GPU:

- a CPU with native bf16 matrix instructions (AVX512_BF16; AMX has them too): bf16 autocast +
  channels_last ran faster than fp32;
- a CPU with AVX2 only (no AVX-512): bf16 autocast + channels_last ran many times *slower* than fp32
  (most likely because oneDNN has no bf16 convolution kernels for AVX2 and falls back to generic code), and
  channels_last in fp32 no faster;
- CUDA (one H100): bf16 + channels_last no faster than fp32: one 572 tile per step is launch-bound, so fp32
  (PyTorch's default: TF32 convolutions) costs nothing.

``run.bf16`` and ``run.channels_last`` are ``"auto"`` in every profile: `resolve` turns them into
bf16 + channels_last on a CPU with native bf16 and into plain fp32 (NCHW) everywhere else;
``true``/``false`` force a path. The decision (`decide`) is a pure function of the device type and
the CPU's capability, never of a timing, so one machine always takes the same path: a resumed run
continues on the path it started on, and a seed gives the same run again (channels_last changes
which dropout mask a seed draws). A CPU with AVX-512 but without bf16 (e.g. Skylake, Cascade Lake)
has not been measured: auto keeps fp32 NCHW there.

What the CPU can do is read from PyTorch's own queries: the instruction set ATen dispatches to
(`torch.backends.cpu.get_cpu_capability()`, lowered by ``ATEN_CPU_CAPABILITY``), the hardware's
AVX512_BF16 and AMX flags (cpuinfo, through `torch.cpu`), and the limit set on oneDNN's
instruction set (``ONEDNN_MAX_CPU_ISA``, which oneDNN obeys but does not report back). bf16 counts as
native only when the hardware has it and neither limit takes it away.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from paper_unet.measurements import say, say_range

__all__ = ["CpuInfo", "FastPath", "cpu_info", "decide", "resolve", "AUTO"]

AUTO = "auto"

# oneDNN instruction-set limits (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                     "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU offers the training step: read by `cpu_info`, or built by hand in tests."""

    model: str  # /proc/cpuinfo's model name
    aten: str  # the instruction set ATen dispatches to: DEFAULT, AVX2, AVX512, ...
    avx512_bf16: bool  # the hardware has AVX512_BF16
    amx: bool  # the hardware has AMX tiles (with bf16)
    onednn_max_isa: str | None = None  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), when set

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix instructions in hardware, usable by both ATen and oneDNN."""
        onednn = self.onednn_max_isa is None or self.onednn_max_isa.upper() in _ONEDNN_BF16_ISAS
        return (self.avx512_bf16 or self.amx) and self.aten.upper().startswith("AVX512") and onednn

    @property
    def cpu_class(self) -> str:
        """The class the timings in results/performance.md are given for."""
        if self.native_bf16:
            return "AMX" if self.amx else "AVX512-BF16"
        if self.aten.upper().startswith("AVX512"):
            return "AVX-512 without bf16" if not (self.avx512_bf16 or self.amx) else \
                "AVX-512 (oneDNN limited below bf16)"
        return "AVX2" if self.aten.upper() == "AVX2" else self.aten

    def describe(self) -> str:
        """One line: the model, its class, and what lowered it (if anything)."""
        limits = []
        if (self.avx512_bf16 or self.amx) and not self.native_bf16:
            limits.append("the hardware has bf16, lowered by "
                          + (f"ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}" if self.onednn_max_isa else
                             f"ATen capability {self.aten}"))
        return f"{self.model}, {self.cpu_class} CPU (ATen {self.aten}" + "".join(f"; {x}" for x in limits) + ")"


def cpu_info() -> CpuInfo:
    """This machine's CPU, as the training step will see it (environment limits included)."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def flag(name: str) -> bool:
        query = getattr(torch.cpu, name, None)
        try:
            return bool(query()) if query is not None else False
        except RuntimeError:
            return False

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None
    return CpuInfo(model=model, aten=torch.backends.cpu.get_cpu_capability(),
                   avx512_bf16=flag("_is_avx512_bf16_supported"), amx=flag("_is_amx_tile_supported"),
                   onednn_max_isa=isa)


def decide(device_type: str, cpu: CpuInfo | None = None) -> tuple[bool, bool, str]:
    """(bf16, channels_last, why) that ``"auto"`` means on this device: a pure function.

    The figures in ``why`` are the measurements the rule rests on, read from results/measurements.json."""
    if device_type == "cuda":
        return False, False, (f"CUDA: fp32, since bf16 + channels_last ran {say('h100_bf16_ratio_full')} fp32 at full "
                              f"width and {say('h100_bf16_ratio_width16')} at width 16 on an H100")
    if device_type != "cpu":
        return False, False, f"{device_type}: fp32, no measurement on this kind of device"
    if cpu is None:
        raise ValueError("the CPU decision needs the CPU's capability (fastpath.cpu_info())")
    if cpu.native_bf16:
        return True, True, (f"{cpu.cpu_class} CPU, native bf16: bf16 + channels_last ran "
                            f"{say('cpu_bf16_speedup_width16')} fp32 (width 16) on 2 cores of such a CPU")
    if cpu.aten.upper().startswith("AVX512"):
        return False, False, (f"{cpu.cpu_class} CPU: fp32, since bf16 is fast only with AVX512_BF16 or AMX, "
                              f"and this class is not measured")
    return False, False, (f"{cpu.cpu_class} CPU, no native bf16: bf16 autocast + channels_last ran "
                          f"{say_range('avx2_bf16_slowdown_width16', 'avx2_bf16_slowdown_full')} slower than fp32 on "
                          f"such a CPU, channels_last alone {say('avx2_channels_last_ratio')}")


@dataclass(frozen=True)
class FastPath:
    """The path a run takes: what was asked, what is used, and why."""

    bf16: bool
    channels_last: bool
    asked_bf16: bool | str
    asked_channels_last: bool | str
    why: str
    device: str
    cpu: CpuInfo | None = None

    def describe(self) -> str:
        """E.g. 'bf16 autocast: auto -> off, channels_last: auto -> off (AVX2 CPU, no native bf16: ...)'."""
        def one(name, asked, used):
            asked = asked if isinstance(asked, str) else ("true" if asked else "false")
            return f"{name}: {asked} -> {'on' if used else 'off'}"

        return (f"{one('bf16 autocast', self.asked_bf16, self.bf16)}, "
                f"{one('channels_last', self.asked_channels_last, self.channels_last)} ({self.why})")

    def short(self) -> str:
        """E.g. 'bf16 autocast + channels_last', 'fp32'."""
        return ("bf16 autocast" if self.bf16 else "fp32") + (" + channels_last" if self.channels_last else "")

    def as_dict(self) -> dict:
        values = asdict(self)
        if self.cpu is not None:
            values["cpu"] = {**values["cpu"], "cpu_class": self.cpu.cpu_class, "native_bf16": self.cpu.native_bf16}
        values["summary"] = self.describe()
        return values


def resolve(bf16: bool | str, channels_last: bool | str, device: torch.device | str,
            cpu: CpuInfo | None = None) -> FastPath:
    """The path for ``run.bf16`` / ``run.channels_last`` (each ``"auto"``, true or false) on ``device``.

    ``cpu`` defaults to this machine's (`cpu_info`), read only for a CPU device."""
    device_type = torch.device(device).type
    if device_type == "cpu" and cpu is None:
        cpu = cpu_info()
    auto_bf16, auto_cl, why = decide(device_type, cpu)
    used_bf16 = auto_bf16 if bf16 == AUTO else bool(bf16)
    used_cl = auto_cl if channels_last == AUTO else bool(channels_last)
    if (bf16, channels_last) != (AUTO, AUTO):
        forced = [name for name, asked in (("bf16", bf16), ("channels_last", channels_last)) if asked != AUTO]
        why = f"{' and '.join(forced)} set in the config; auto would be: {why}"
        if used_bf16 and device_type == "cpu" and not cpu.native_bf16:
            why += (f"; WARNING: bf16 autocast on a CPU without native bf16 ran "
                    f"{say_range('avx2_bf16_slowdown_width16', 'avx2_autocast_slowdown_width16')} slower than fp32")
    return FastPath(used_bf16, used_cl, bf16, channels_last, why, device_type,
                    cpu if device_type == "cpu" else None)
