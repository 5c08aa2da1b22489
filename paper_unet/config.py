"""Typed configuration with the paper's constants as defaults, and named profiles.

Profiles live in paper_unet/profiles/*.toml (``paper``, ``cpu``, ``smoke``), inside the package
so that an installed wheel has them; reproduction/configs is a link to that folder for readers.
A profile only overrides what differs from the defaults below; unknown sections or keys are rejected with the
list of valid ones, so a typo cannot silently fall back to a default. The resolved configuration
is saved with every run (config.json) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ModelConfig", "DataConfig", "OptimConfig", "RunConfig", "Config", "load_config",
           "config_from_dict", "PROFILE_DIR", "profiles", "OWN_DATA", "default_profile", "DEFAULT_PROFILE_RULE"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass
class ModelConfig:
    in_channels: int = 1
    num_classes: int = 2  # ISBI: membrane, cell
    base_channels: int = 64  # [paper] 64 ... 1024
    depth: int = 5  # [paper]
    dropout: float = 0.5  # [release]
    variant: str = "paper"
    network: str = "unet"  # "unet": the paper's; "padded": PaddedUNet (same-padding + BatchNorm), ablation only
    padded_batch_norm: bool = True  # network = "padded" only: False drops its BatchNorm (ablation padded_no_bn)


@dataclass
class DataConfig:
    tile: int = 572  # [paper] input tile; output 388
    w0: float = 10.0  # [paper] Eq. 2
    weight_map: bool = True  # [paper] w(x) of Eq. 2 in the loss; False: plain cross entropy (ablation)
    sigma: float = 5.0  # [paper] Eq. 2
    elastic_std: float = 10.0  # [paper] px
    elastic_grid: int = 3  # [paper]
    rotate: bool = True  # [ours]
    flip: bool = True  # [ours]
    gray_values: bool = True  # [ours] gamma / contrast / brightness
    normalize: str = "auto"  # [ours] intensities to [0, 1]: auto | dtype | minmax | percentile (images.py)
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])  # [ours] normalize = percentile: to 0 and 1
    # model.network = "padded" only: labels and loss over the whole tile (the popular setup); default: the
    # central region the unpadded network predicts for the same tile (388 of 572), for a fair ablation
    label_whole_tile: bool = False


@dataclass
class OptimConfig:
    lr: float = 1e-3  # [ours] unpublished; checked at full width: results/paper_lr_check/
    momentum: float = 0.99  # [paper]
    weight_decay: float = 0.0  # [ours] unpublished
    batch_size: int = 1  # [paper] one large tile per step
    iterations: int = 50_000  # [ours] unpublished (the paper trained for about ten hours on a Titan)
    lr_decay_at: float = 0.8  # [ours] fraction of iterations after which lr *= lr_decay
    lr_decay: float = 0.1  # [ours]
    warmup: int = 0  # [ours] linear warm-up: lr x (i + 1) / warmup for iterations i < warmup (0: none)
    divergence_factor: float = 20.0  # stop when the smoothed loss exceeds this x its start
    collapse_patience: int = 5  # stop after this many log intervals of a dead network (collapse.py; 0: off)
    # [ours] after a dead network or a diverging loss, start again from the initial weights at restart_factor x lr,
    # at most this many times (restart.py). 0 in every profile; `paper-unet train` on your own data sets it
    restarts: int = 0
    restart_factor: float = 0.1


@dataclass
class RunConfig:
    seed: int = 0
    log_every: int = 10
    validate_every: int = 1000
    checkpoint_every: int = 500
    folds: int = 3  # cross-validation over contiguous blocks of the 30 training slices
    tta: bool = True  # [ours] 8 dihedral transforms at test time
    device: str = "auto"  # auto | cpu | cuda
    # the fast path (fastpath.py): "auto" takes bf16 autocast + channels_last on a CPU with native bf16
    # (AVX512_BF16 / AMX) and fp32 NCHW elsewhere (AVX2-only CPUs, CUDA); true / false force a path
    bf16: bool | str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False  # torch.compile
    # speed levers of the training step (step.py), off until a GPU has measured them (results/performance.md)
    cudnn_benchmark: bool = False  # CUDA: cuDNN times its algorithms per shape once and keeps the fastest
    fused_sgd: bool = False  # PyTorch's fused SGD kernel (the same update)
    cuda_graph: bool = False  # CUDA: the whole step captured once as a CUDA graph and replayed (implies fused_sgd)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune


@dataclass
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from paper_unet.atomic import write_json

        write_json(path, self.to_dict())


# `paper-unet train` on your own data (--images/--labels) adds these to the profile unless --set gives them:
# data we have never seen must not end in a dead network (README "Your own data"; the study that chose them:
# results/own_data/). The ISBI reproduction does not use them.
OWN_DATA = {"optim.restarts": 2}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"[{where}] must be a table of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in [{where}]; valid keys: "
                         f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, name)
            continue
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if hint in (int, float, str, bool) and not isinstance(value, hint) or (
                hint is int and isinstance(value, bool)):
            raise ValueError(f"[{where}] {name} must be {hint.__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and wrong types."""
    config = _build(Config, values, "top level")
    _validate(config)
    return config


def _validate(config: Config) -> None:
    from paper_unet.tiling import check_input_size

    check_input_size(config.data.tile, config.model.depth)
    o, r = config.optim, config.run
    if o.lr <= 0 or not 0 <= o.momentum < 1 or o.iterations < 1 or o.batch_size < 1:
        raise ValueError("optim: lr > 0, 0 <= momentum < 1, iterations >= 1 and batch_size >= 1 are required")
    if not 0 < o.lr_decay_at <= 1:
        raise ValueError("optim.lr_decay_at must be in (0, 1]")
    if o.restarts < 0 or not 0 < o.restart_factor < 1:
        raise ValueError(f"optim.restarts must be >= 0 and optim.restart_factor in (0, 1), got {o.restarts} and "
                         f"{o.restart_factor}")
    if not 0 <= o.warmup < o.iterations:
        raise ValueError(f"optim.warmup must be >= 0 and below optim.iterations ({o.iterations}), got {o.warmup}")
    if min(r.log_every, r.validate_every, r.checkpoint_every) < 1:
        raise ValueError("run: log_every, validate_every and checkpoint_every must be >= 1")
    from paper_unet.images import NORMALIZATIONS

    if config.model.network not in ("unet", "padded"):
        raise ValueError(f"model.network must be unet or padded, got {config.model.network!r}")
    if config.model.network == "unet" and config.data.label_whole_tile:
        raise ValueError("data.label_whole_tile=true applies to the padded network only (the paper's U-Net "
                         "predicts the tile's centre): add model.network=\"padded\" or drop the setting")
    if config.model.network == "unet" and not config.model.padded_batch_norm:
        raise ValueError("model.padded_batch_norm=false applies to the padded network only (the paper's U-Net "
                         "has no BatchNorm): add model.network=\"padded\" or drop the setting")

    low_high = config.data.percentiles
    if not (isinstance(low_high, list) and len(low_high) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in low_high)
            and 0 <= low_high[0] < low_high[1] <= 100):
        raise ValueError(f"data.percentiles must be [low, high] with 0 <= low < high <= 100, got {low_high!r}")
    config.data.percentiles = [float(v) for v in low_high]
    if config.data.normalize not in NORMALIZATIONS:
        raise ValueError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)}, got {config.data.normalize!r}")
    if r.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
        raise ValueError(f"run.compile_mode must be default, reduce-overhead or max-autotune, got {r.compile_mode!r}")
    if r.cuda_graph and r.compile:
        raise ValueError("run.cuda_graph and run.compile both make the step a graph; set one of them "
                         "(torch.compile's CUDA graphs: run.compile_mode=\"reduce-overhead\")")
    for name in ("bf16", "channels_last"):
        value = getattr(r, name)
        if not (value is True or value is False or value == "auto"):
            raise ValueError(f"run.{name} must be auto, true or false, got {value!r}")
    if r.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be auto, cpu or cuda, got {r.device!r}")


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-3)")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip().split("."), value


# Every entry point (run_isbi.sh, run_ablations.sh, paper-unet train/reproduce/estimate/ablations/config, the
# study scripts) takes this profile when none is given: `default_profile`.
DEFAULT_PROFILE_RULE = "paper when a CUDA GPU is available, else cpu"


def default_profile() -> str:
    """The profile when none is given (`DEFAULT_PROFILE_RULE`): ``paper`` on a machine with a CUDA GPU,
    ``cpu`` elsewhere (the paper profile, full width, takes days on a CPU)."""
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_config(profile: str | Path | None = "paper", overrides: list[str] | None = None) -> Config:
    """A profile name (paper_unet/profiles/NAME.toml) or a TOML path, plus key=value overrides; None:
    `default_profile`."""
    profile = default_profile() if profile is None else profile
    path = Path(profile)
    if not path.suffix:
        path = PROFILE_DIR / f"{profile}.toml"
        if not path.is_file():
            raise ValueError(f"unknown profile {profile!r}; available: {', '.join(profiles())}")
    elif not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    with open(path, "rb") as handle:
        values = tomllib.load(handle)
    values.setdefault("name", path.stem)
    for text in overrides or []:
        keys, value = _parse_override(text)
        target = values
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return config_from_dict(values)
