"""The training step as one unit: draw sample i on the host, then one SGD step on the device.

`TrainingStep` runs iteration i of a run (paper Sec. 3: one large tile per step, SGD with momentum
0.99): the host draws sample i's slice and augmentation parameters (`TileSampler.draw_batch`, a few
numbers); the device augments the tile (`TileSampler.device_batch`), runs the forward pass, the
weighted loss, backward and the SGD update, and adds the loss to a running sum that stays on the
device. The training loop (`train`) and the step profiler (reproduction/benchmarks/profile_step.py)
call it (the step timer `estimate.time_step` calls `train_step` on tiles drawn beforehand); monitors,
logging and checkpoints stay beside it, in `train`.

The speed levers (`run.*` keys, all off by default until a GPU has measured them,
results/performance.md):

- ``cudnn_benchmark`` (CUDA): cuDNN times its convolution algorithms for each shape once and keeps the
  fastest, instead of a heuristic pick; the shapes never change, so the search is paid once.
- ``fused_sgd``: PyTorch's fused SGD kernel (one or two launches for all 46 parameters instead of the
  foreach path's several); the same update to float rounding (6e-8 apart in a weight after 20
  CPU steps, tests).
- ``cuda_graph``: the step's device part (augmentation, forward, loss, backward, the SGD update with
  the learning rate read from a device tensor, the loss sum) is captured once as a CUDA graph and
  replayed every iteration: about 300 kernel launches become one. The host writes sample i's draw
  and learning rate into a pinned buffer (a ring of them, so the host may run a few steps ahead),
  copied asynchronously into the graph's static input. It implies the fused SGD (the one that reads
  its rate from a device tensor). Before capturing, a few warm-up steps run on a side stream (lazy
  initialisation, cuDNN's search) and the model, the optimiser state, the loss sum and the RNG
  states are then restored, so that the first replay is the run's next step: a graph run resumes
  exactly like an eager one. What differs from eager: dropout's random numbers come from the same
  generator but are drawn per replay (a graph run and an eager run of one seed differ in their
  dropout masks, and in float rounding); the gray-value kernels run for every sample (an identity
  draw is left exact, so the tiles are the same). On the CPU there is nothing to capture: the same
  static-buffer step runs eagerly, and equals the plain step bit for bit (tests).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from paper_unet.fastpath import FastPath
from paper_unet.loss import weighted_cross_entropy
from paper_unet.model import center_crop
from paper_unet.sampler import TileSampler

__all__ = ["train_step", "TrainingStep", "Levers", "resolve_levers", "make_optimizer", "cudnn_benchmark"]

RING = 4  # pinned host buffers for a graph's inputs: the host may run this many steps ahead of the GPU
GRAPH_WARMUP = 3  # eager steps on a side stream before a capture (then undone)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, w: torch.Tensor | None, *, bf16: bool = False,
               channels_last: bool = False, autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch of tiles; returns (loss, logits) as device tensors (no host sync).

    ``bf16``: the network runs under bf16 autocast (matrix work in bf16), the loss and its
    softmax in fp32. ``channels_last``: the input in NHWC memory order (the model's parameters
    must be converted too). Under DDP, backward() all-reduces (averages) the gradients.
    ``autocast_cache``: autocast keeps its bf16 weight copies for the step (off for a CUDA graph
    capture, which requires it; the same numbers). A same-padding network (the ablation) predicts its
    whole tile: the loss is taken on the labelled centre (``y``'s size); the returned logits are whole.
    """
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=autocast_cache)
    with autocast if bf16 else nullcontext():
        logits = model(x)
    scored = center_crop(logits, y.shape[-2:]) if logits.shape[-2:] != y.shape[-2:] else logits
    loss = weighted_cross_entropy(scored, y, w)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


@dataclass(frozen=True)
class Levers:
    """The step's speed levers as they apply on this device (`resolve_levers`)."""

    cudnn_benchmark: bool = False
    fused_sgd: bool = False
    cuda_graph: bool = False  # captured on CUDA; on the CPU the same static-buffer step runs eagerly

    def describe(self) -> str:
        on = [name for name in ("cudnn_benchmark", "fused_sgd", "cuda_graph") if getattr(self, name)]
        return "levers: " + (", ".join(on) if on else "none")


def resolve_levers(run, device: torch.device, world: int = 1) -> Levers:
    """``run``'s lever keys on ``device`` (cudnn_benchmark only means something on CUDA; cuda_graph
    implies fused_sgd). A graph under DDP is refused: its all-reduce would have to be captured too."""
    if run.cuda_graph and world > 1:
        raise ValueError("run.cuda_graph is not supported with several training processes (DDP); train one "
                         "network per process (run_isbi.sh --parallel-folds) or set run.cuda_graph=false")
    return Levers(cudnn_benchmark=run.cudnn_benchmark and device.type == "cuda",
                  fused_sgd=run.fused_sgd or run.cuda_graph, cuda_graph=run.cuda_graph)


def make_optimizer(model: torch.nn.Module, optim, levers: Levers) -> torch.optim.SGD:
    """SGD with ``optim``'s rate, momentum and weight decay (paper: momentum 0.99), fused or not."""
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, fused=True if levers.fused_sgd else None)


@contextmanager
def cudnn_benchmark(enabled: bool):
    """``torch.backends.cudnn.benchmark`` set to ``enabled`` for the block, then put back."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class TrainingStep:
    """Iteration i of a run: ``step(i, lr)``; the loss is added to ``running`` (a float64 device
    tensor) and the step's logits are left in ``logits``; nothing waits for the device.

    Args:
        model: what the step runs (the network, or its DDP / compiled wrapper).
        optimizer: SGD over ``model``'s parameters (`make_optimizer`).
        sampler: the training samples (`training_sampler`); iteration i uses samples
            i * batch_size ... (i + 1) * batch_size - 1.
        weight_map: the loss weighted by w(x) (Eq. 2), else plain cross entropy (an ablation).
        fast: the fast path (bf16 autocast, channels_last).
        graph: the static-buffer step, captured as a CUDA graph on CUDA (`run.cuda_graph`); needs
            a fused SGD optimizer.
        compiled_graphs: the model is torch.compile'd in "reduce-overhead" mode (its own CUDA graphs).
        warmup: warm-up steps before a capture, undone afterwards (default: 3 on CUDA, 0 on the CPU).
        running: the loss sum to continue (a resumed run's partial log interval).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.SGD, sampler: TileSampler, *,
                 batch_size: int = 1, weight_map: bool = True, fast: FastPath | None = None, graph: bool = False,
                 compiled_graphs: bool = False, warmup: int | None = None, running: float = 0.0) -> None:
        if graph and not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("the graph step needs the fused SGD (make_optimizer with fused_sgd)")
        self.model, self.optimizer, self.sampler = model, optimizer, sampler
        self.batch_size, self.weight_map, self.graph = batch_size, weight_map, graph
        self.bf16 = bool(fast and fast.bf16)
        self.channels_last = bool(fast and fast.channels_last)
        self.compiled_graphs = compiled_graphs
        self.device = sampler.device
        self.running = torch.tensor(running, dtype=torch.float64, device=self.device)
        self.logits: torch.Tensor | None = None
        self.captured: torch.cuda.CUDAGraph | None = None
        if graph:
            self.warmup = (GRAPH_WARMUP if self.device.type == "cuda" else 0) if warmup is None else warmup
            self._setup_static()

    def __call__(self, iteration: int, lr: float) -> None:
        if not self.graph:
            return self._eager(iteration, lr)
        self._stage(iteration, lr)
        if self.device.type == "cuda":
            if self.captured is None:
                self._capture()
            self.captured.replay()
        else:
            if self.warmup:
                self._warm_up_and_undo()
                self.warmup = 0
            self._device_step()

    # the plain step: as written, one launch at a time
    def _eager(self, iteration: int, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n = self.batch_size
        x, y, w = self.sampler.batch(range(iteration * n, (iteration + 1) * n))
        if self.compiled_graphs:  # a new training step: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        loss, self.logits = train_step(self.model, self.optimizer, x, y, w if self.weight_map else None,
                                       bf16=self.bf16, channels_last=self.channels_last)
        self.running += loss.detach()

    # the static-buffer step: fixed input buffers, the learning rate as a device tensor
    def _setup_static(self) -> None:
        n = self.batch_size
        _, packed = self.sampler.draw_batch(range(n))
        self.width = packed.shape[1]
        size = 1 + n + n * self.width  # [lr, n slice numbers, n packed parameter rows], float32
        pin = self.device.type == "cuda"
        self.host = [torch.zeros(size, pin_memory=pin) for _ in range(RING if pin else 1)]
        self.copied: list[torch.cuda.Event | None] = [None] * len(self.host)
        self.static = torch.zeros(size, device=self.device)
        self.lr = torch.zeros((), device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.gray = self.sampler.gray_values  # fixed for the graph: True gives the same tiles (augment_packed)

    def _stage(self, iteration: int, lr: float) -> None:
        """Sample ``iteration``'s draw and ``lr`` into a host buffer, copied asynchronously to the static input."""
        n = self.batch_size
        slices, packed = self.sampler.draw_batch(range(iteration * n, (iteration + 1) * n))
        slot = iteration % len(self.host)
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the copy that last read this buffer has been done
        host = self.host[slot]
        host[0] = lr
        host[1 : 1 + n] = slices
        host[1 + n :] = packed.flatten()
        self.static.copy_(host, non_blocking=self.device.type == "cuda")
        if self.device.type == "cuda":
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record()

    def _device_step(self) -> None:
        """Device operations only, on the static input (what a CUDA graph captures)."""
        n = self.batch_size
        self.lr.copy_(self.static[0])
        slices = self.static[1 : 1 + n].long()
        packed = self.static[1 + n :].view(n, self.width)
        x, y, w = self.sampler.device_batch(slices, packed, gray=self.gray)
        loss, self.logits = train_step(self.model, self.optimizer, x, y, w if self.weight_map else None,
                                       bf16=self.bf16, channels_last=self.channels_last, autocast_cache=False)
        self.running += loss.detach()

    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step changes: parameters, buffers (BatchNorm), momentum, the loss sum."""
        momentum = [state["momentum_buffer"] for state in self.optimizer.state.values() if "momentum_buffer" in state]
        return [*self.model.parameters(), *self.model.buffers(), *momentum, self.running]

    def _warm_up_and_undo(self) -> None:
        """``warmup`` steps on the current static input, then everything they changed put back."""
        tensors = self._state()
        saved = [t.detach().clone() for t in tensors]
        had_momentum = any("momentum_buffer" in s for s in self.optimizer.state.values())
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None  # on CUDA: a side stream, as captures want
        with torch.random.fork_rng(devices=[self.device] if cuda else []):  # the RNG states put back after
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side) if side is not None else nullcontext():
                for _ in range(self.warmup):
                    self._device_step()
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
            if not had_momentum:  # a first step: momentum 0 gives buf = grad exactly, as SGD's first step
                for state in self.optimizer.state.values():
                    state["momentum_buffer"].zero_()

    def _capture(self) -> None:
        self._warm_up_and_undo()
        self.optimizer.zero_grad(set_to_none=True)
        self.captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.captured):
            self._device_step()
