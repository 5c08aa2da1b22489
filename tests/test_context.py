"""The run context (`paper_unet.context`): device, fast path and levers resolved once; its factories build what
the training loop trains."""

from __future__ import annotations

import torch

from conftest import tiny_config
from paper_unet.context import RunContext, training_sampler
from paper_unet.fastpath import FastPath, resolve
from paper_unet.train import train


def test_the_context_resolves_once_what_the_config_asks_for_here():
    config = tiny_config()
    ctx = RunContext.build(config, "cpu")
    assert ctx.device == torch.device("cpu") and ctx.main and ctx.world == 1
    assert ctx.fast == resolve(config.run.bf16, config.run.channels_last, "cpu")
    assert not (ctx.levers.cuda_graph or ctx.levers.cudnn_benchmark)


def test_the_networks_initial_weights_come_from_the_seed_and_the_path_sets_the_memory_order():
    config = tiny_config()
    plain = RunContext.build(config, "cpu", fast=FastPath(False, False, False, False, "test", "cpu"))
    a, b = plain.model(), plain.model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    nhwc = RunContext.build(config, "cpu", fast=FastPath(False, True, False, True, "test", "cpu")).model()
    conv = next(p for p in nhwc.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), nhwc.state_dict().values()))
    optimizer = plain.optimizer(a)
    assert optimizer.defaults["momentum"] == config.optim.momentum and optimizer.defaults["lr"] == config.optim.lr


def test_the_sampler_is_the_training_sampler(tiny_data):
    config = tiny_config()
    ctx = RunContext.build(config, "cpu")
    ours, theirs = ctx.sampler(*tiny_data, 4).batch([1]), training_sampler(config, *tiny_data, ctx.device, 4).batch([1])
    assert all(torch.equal(x, y) for x, y in zip(ours, theirs))


def test_training_starts_from_the_contexts_initial_weights(tiny_data, tmp_path):
    config = tiny_config(iterations=1)
    config.run.device = "cpu"  # on a GPU machine too: the comparison is on the CPU
    result = train(config, *tiny_data, tmp_path / "run", progress=False, stop_after=0)
    initial = RunContext.build(config, "cpu").model()
    assert all(torch.equal(x, y) for x, y in zip(initial.state_dict().values(), result.model.state_dict().values()))
