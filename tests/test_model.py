"""The U-Net of paper Sec. 2 / Fig. 1: shapes, parameter counts, init, dropout, equivariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from paper_unet import PaddedUNet, UNet


def conv_output_shapes(model: nn.Module, size: int) -> list[tuple[int, int]]:
    """(channels, edge) after every conv / up-conv for a size x size input, on the meta device."""
    shapes: list[tuple[int, int]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append((out.shape[1], out.shape[-1])))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    model.to("meta")(torch.empty(1, 1, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return shapes


def test_every_intermediate_size_of_fig1_for_a_572_tile():
    # docs/spec.md section 1: d0 570,568 | d1 284->282,280 | d2 138,136 | d3 66,64 | d4 30,28 |
    # u3 56->54,52 | u2 104->102,100 | u1 200->198,196 | u0 392->390,388 -> 388.
    expected = [(64, 570), (64, 568), (128, 282), (128, 280), (256, 138), (256, 136),
                (512, 66), (512, 64), (1024, 30), (1024, 28),
                (512, 56), (512, 54), (512, 52), (256, 104), (256, 102), (256, 100),
                (128, 200), (128, 198), (128, 196), (64, 392), (64, 390), (64, 388), (2, 388)]
    assert conv_output_shapes(UNet(), 572) == expected


def test_skip_crops_are_centred_4_16_40_88_per_side():
    shapes = conv_output_shapes(UNet(), 572)
    skips = [568, 280, 136, 64]  # last conv of each contracting level
    ups = [shapes[i][1] for i in (19, 16, 13, 10)]  # the four up-conv outputs, top level first
    assert ups == [392, 200, 104, 56]
    assert [(s - u) // 2 for s, u in zip(skips, ups)] == [88, 40, 16, 4]
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    from paper_unet.model import center_crop
    assert torch.equal(center_crop(x, (2, 2)), x[..., 2:4, 2:4])


def test_parameter_counts_paper_and_release():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(UNet()) == 31_030_658
    assert count(UNet(variant="release")) == 31_100_354


def test_23_convolutional_layers():
    model = UNet()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    kinds = [(type(m).__name__, m.kernel_size) for m in convs]
    assert kinds.count(("Conv2d", (3, 3))) == 18
    assert kinds.count(("ConvTranspose2d", (2, 2))) == 4
    assert kinds.count(("Conv2d", (1, 1))) == 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.padding in ((0, 0), 0) for m in convs if isinstance(m, nn.Conv2d))


def test_release_variant_has_relu_after_every_upconv():
    model = UNet(variant="release")
    for up in model.upconvs:
        assert isinstance(up, nn.Sequential) and isinstance(up[1], nn.ReLU)
    assert model.upconvs[-1][0].out_channels == 128
    assert conv_output_shapes(UNet(variant="release"), 572)[-1] == (2, 388)
    with pytest.raises(ValueError, match="variant"):
        UNet(variant="padded")


@pytest.mark.parametrize("size, nearest", [(573, "572 or 588"), (512, "508 or 524"), (100, "188")])
def test_invalid_input_size_raises_with_the_nearest_valid_sizes(size, nearest):
    model = UNet(base_channels=2)
    with pytest.raises(ValueError, match=nearest):
        model(torch.zeros(1, 1, size, size))


def test_wrong_channel_count_raises():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        UNet(base_channels=2)(torch.zeros(1, 3, 188, 188))


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3)
    model(torch.rand(1, 1, 60, 60)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_init_is_gaussian_with_std_sqrt_2_over_fan_in():
    torch.manual_seed(0)
    model = UNet()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert UNet.fan_in(convs[1]) == 9 * 64  # the paper's example: 3x3 conv on 64 channels
    for m in convs:
        w = m.weight.detach().double()
        expected = math.sqrt(2.0 / UNet.fan_in(m))
        # standard error of a sample std is std / sqrt(2n); allow 5 of them
        assert abs(w.std().item() - expected) < 5 * expected / math.sqrt(2 * w.numel())
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())
        assert torch.count_nonzero(m.bias) == 0
    up = model.upconvs[0]
    assert UNet.fan_in(up) == 1024  # one tap per input channel for a 2x2, stride-2 up-conv


def test_dropout_only_in_training_and_only_at_the_end_of_the_contracting_path():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3, dropout=0.5)
    dropouts = [i for i, d in enumerate(model.dropouts) if isinstance(d, nn.Dropout)]
    assert dropouts == [1, 2]  # the two deepest levels (512 and 1024 at depth 5)
    assert [i for i, d in enumerate(UNet(base_channels=2).dropouts) if isinstance(d, nn.Dropout)] == [3, 4]
    x = torch.rand(1, 1, 60, 60)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    no_dropout = UNet(base_channels=4, depth=3, dropout=0.0).train()
    assert torch.equal(no_dropout(x), no_dropout(x))


@settings(max_examples=6, deadline=None)
@given(dy=st.integers(0, 3), dx=st.integers(0, 3))
def test_translation_equivariance_for_shifts_by_multiples_of_16(dy, dx):
    """Shifting the input by 16 px shifts the output by 16 px: what makes tiling exact."""
    torch.manual_seed(1)
    model = UNet(base_channels=4, depth=5, dropout=0.0).eval()
    x = torch.rand(1, 1, 252, 252)  # 252 = 16*12 + 60 -> output 68
    with torch.no_grad():
        whole = model(x)
        part = model(x[..., 16 * dy : 16 * dy + 204, 16 * dx : 16 * dx + 204])  # output 20
    torch.testing.assert_close(part, whole[..., 16 * dy : 16 * dy + 20, 16 * dx : 16 * dx + 20],
                               rtol=1e-5, atol=1e-5)


def test_shift_by_8_is_not_equivariant():
    """Negative control: the pooling phase matters, so the equivariance test can fail."""
    torch.manual_seed(1)
    model = UNet(base_channels=4, depth=5, dropout=0.0).eval()
    x = torch.rand(1, 1, 252, 252)
    with torch.no_grad():
        whole, part = model(x), model(x[..., 8:212, 8:212])
    assert (part - whole[..., 8:28, 8:28]).abs().max() > 1e-3


def test_padded_unet_keeps_odd_sizes_and_can_output_negative_logits():
    torch.manual_seed(0)
    model = PaddedUNet(features=(8, 16, 32, 64)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 37, 45))
    assert out.shape == (1, 2, 37, 45)
    assert (out < 0).any()
    assert isinstance(PaddedUNet().head, nn.Conv2d)


def test_padded_unet_without_batch_norm_is_the_same_network_less_its_batch_norm():
    """Ablation padded_no_bn: the same convolutions, each with its bias back, and no BatchNorm."""
    with_bn, without = PaddedUNet(features=(8, 16, 32, 64)), PaddedUNet(features=(8, 16, 32, 64), batch_norm=False)
    convs = [[m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] for net in (with_bn, without)]
    assert [c.weight.shape for c in convs[0]] == [c.weight.shape for c in convs[1]]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 18  # 9 blocks x 2 convs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    three_by_three = [[c for c in net if c.kernel_size == (3, 3)] for net in convs]
    assert all(c.bias is None for c in three_by_three[0]) and all(c.bias is not None for c in three_by_three[1])
    with torch.no_grad():
        assert without.eval()(torch.rand(1, 1, 37, 45)).shape == (1, 2, 37, 45)


def test_padded_unet_has_the_unets_dropout_in_the_same_place():
    """The fair ablation: dropout after the deepest level before the bottleneck (also on its skip) and after the
    bottleneck, as `UNet` at its two deepest levels; active in training only; none by default (the popular setup)."""
    model = PaddedUNet(features=(4, 8), dropout=0.5)
    assert isinstance(model.deep_dropout, nn.Dropout) and isinstance(model.bottom_dropout, nn.Dropout)
    assert model.deep_dropout.p == model.bottom_dropout.p == 0.5
    assert not any(isinstance(m, nn.Dropout) for m in PaddedUNet(features=(4, 8)).modules())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))  # masks differ between calls
    seen = []
    hook = model.deep_dropout.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    assert seen == [(1, 8, 16, 16)]  # the deepest level (8 channels at 16 px), before the pool
    with pytest.raises(ValueError, match="dropout"):
        PaddedUNet(dropout=1.0)


def test_golden_output_of_a_seeded_tiny_unet():
    """Regression guard: fixed seed, fixed input, stored values (computed with torch 2.13.0 CPU)."""
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3, dropout=0.0).eval()
    yy, xx = np.mgrid[0:60, 0:60]
    image = (0.5 + 0.5 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(image)[None, None])[0].numpy()
    assert out.shape == (2, 20, 20)
    expected = np.array(
        [[[-0.936439, -4.279466, -1.992004, -1.153030], [-0.152824, -2.264599, -1.909702, -0.815445],
          [-0.956044, -1.734186, -1.103339, -4.377719], [-1.521878, -0.486029, -1.320742, -1.941444]],
         [[0.771106, -1.093419, 0.060085, -0.664900], [-0.101259, 0.738075, 0.330284, 0.264457],
          [1.165328, -0.275955, 0.568097, 0.122444], [0.442386, 0.084059, 0.204766, 0.335774]]])
    np.testing.assert_allclose(out[:, ::5, ::5], expected, atol=2e-5)
    assert out.sum() == pytest.approx(-596.082, abs=2e-2)


def test_forward_flops_by_hand_and_at_paper_scale():
    # depth 1, 1 channel, 10x10: conv 8x8x9 MACs + conv 6x6x9 + 1x1 head 6x6x2 -> 2 * 972 FLOPs
    assert UNet(base_channels=1, depth=1).forward_flops(10) == 2 * (64 * 9 + 36 * 9 + 36 * 2)
    # one training step (forward + backward ~ 3x forward) at 572: about 902 GFLOP
    assert 3 * UNet().forward_flops(572) == pytest.approx(902.6e9, rel=1e-3)
