"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015), Sec. 2 and Fig. 1.

    "The network architecture is illustrated in Figure 1. It consists of a contracting path (left
    side) and an expansive path (right side). The contracting path follows the typical architecture
    of a convolutional network. It consists of the repeated application of two 3x3 convolutions
    (unpadded convolutions), each followed by a rectified linear unit (ReLU) and a 2x2 max pooling
    operation with stride 2 for downsampling. At each downsampling step we double the number of
    feature channels. Every step in the expansive path consists of an upsampling of the feature map
    followed by a 2x2 convolution ("up-convolution") that halves the number of feature channels, a
    concatenation with the correspondingly cropped feature map from the contracting path, and two
    3x3 convolutions, each followed by a ReLU. The cropping is necessary due to the loss of border
    pixels in every convolution. At the final layer a 1x1 convolution is used to map each
    64-component feature vector to the desired number of classes. In total the network has 23
    convolutional layers."

For a 572x572 input tile the feature maps are (Fig. 1)::

    d0  572 -> 570 -> 568  (64)   ---- crop 88/side: 568 -> 392 --------------------> u0 392 -> 390 -> 388 (64) -> 1x1 -> 388
    d1  284 -> 282 -> 280  (128)  ---- crop 40/side: 280 -> 200 ----------> u1 200 -> 198 -> 196 (128)
    d2  140 -> 138 -> 136  (256)  ---- crop 16/side: 136 -> 104 ---> u2 104 -> 102 -> 100 (256)
    d3   68 ->  66 ->  64  (512)  ---- crop  4/side:  64 ->  56 -> u3 56 -> 54 -> 52 (512)
    d4   32 ->  30 ->  28  (1024)

With 1 input channel and 2 classes the network has 31,030,658 parameters. Valid input sizes are
16k + 60 (k >= 8), giving outputs 16k - 124; every output pixel sees 92 px of context per side.

`PaddedUNet` is *not* the paper's network: it is the popular padded + BatchNorm tutorial variant,
kept only as an ablation baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from paper_unet.tiling import check_input_size, output_size

__all__ = ["UNet", "PaddedUNet", "center_crop"]

VARIANTS = ("paper", "release")


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` to ``size`` around the centre (Fig. 1, grey arrows)."""
    h, w = x.shape[-2:]
    th, tw = size
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


class _TwoConvs(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by a ReLU (Fig. 1, blue arrows)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The paper's U-Net: unpadded convolutions, centre-cropped skips, no batch norm.

    Args:
        in_channels: image channels (1 for the ISBI EM stacks).
        num_classes: output classes (2 for ISBI: membrane, cell).
        base_channels: channels of the first level; the paper uses 64. Smaller widths keep CPU
            tests and CPU runs affordable; the arithmetic of sizes does not depend on it.
        depth: number of resolution levels; the paper uses 5 (64 ... 1024 channels).
        dropout: drop probability at the end of the contracting path (see below); 0 disables it.
        variant: ``"paper"`` (default) follows the paper's text; ``"release"`` follows the authors'
            2015 Caffe release, which has a ReLU after every up-convolution and a last
            up-convolution that keeps 2 * base_channels (31,100,354 parameters).

    Decision: dropout placement. The paper only says "Drop-out layers at the end of the
    contracting path perform further implicit data augmentation" (Sec. 3.1) and gives no rate. We
    follow the authors' release: p = 0.5 after the last ReLU of the two deepest levels (512 and
    1024 channels), active in training only; the 512-level dropout also feeds the skip connection.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 5,
        dropout: float = 0.5,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if base_channels < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError("in_channels, num_classes and base_channels must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_channels, self.depth, self.variant = base_channels, depth, variant
        widths = [base_channels * 2**level for level in range(depth)]  # 64, 128, 256, 512, 1024

        # Contracting path: levels 0 .. depth-2 end in a 2x2 max-pool; level depth-1 is the bottom.
        self.contracting = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.contracting.append(_TwoConvs(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # Decision (release): dropout on the two deepest levels only.
        self.dropouts = nn.ModuleList(
            nn.Dropout(dropout) if dropout > 0 and level >= depth - 2 else nn.Identity()
            for level in range(depth)
        )

        # Expansive path: per level from the bottom up, a 2x2 up-convolution and two 3x3 convs.
        self.upconvs = nn.ModuleList()
        self.expansive = nn.ModuleList()
        for level in reversed(range(depth - 1)):  # 3, 2, 1, 0
            width = widths[level]
            # Release variant: the last up-convolution keeps 2 * base_channels (128, not 64).
            up_width = 2 * width if (variant == "release" and level == 0) else width
            upconv: nn.Module = nn.ConvTranspose2d(channels, up_width, kernel_size=2, stride=2)
            if variant == "release":
                upconv = nn.Sequential(upconv, nn.ReLU(inplace=True))
            self.upconvs.append(upconv)
            self.expansive.append(_TwoConvs(width + up_width, width))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, kernel_size=1)  # 64 -> 2 (the 23rd conv)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian init with std sqrt(2 / N), N = incoming nodes of one neuron; biases 0 (Sec. 3).

        For a kxk convolution N = k*k*in_channels (e.g. 9 * 64 = 576). Decision: for the 2x2
        up-convolution with stride 2 each output pixel receives exactly one tap per input channel,
        so N = in_channels (PyTorch's and Caffe's fan-in formula would give 4 * out_channels).
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / self.fan_in(module)))
                nn.init.zeros_(module.bias)

    @staticmethod
    def fan_in(module: nn.Module) -> int:
        """N of the paper's init: the number of incoming nodes of one output neuron."""
        if isinstance(module, nn.ConvTranspose2d):
            stride_covers_kernel = tuple(module.stride) == tuple(module.kernel_size)
            if not stride_covers_kernel:
                raise ValueError("fan_in is defined here for up-convolutions with stride == kernel")
            return module.in_channels
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            return module.in_channels * kh * kw
        raise TypeError(f"no fan-in for {type(module).__name__}")

    def output_size(self, input_size: int) -> int:
        """Edge of the output for a square input of edge ``input_size`` (572 -> 388)."""
        return output_size(input_size, self.depth)

    def forward_flops(self, height: int, width: int | None = None) -> int:
        """Floating-point operations (2 per multiply-add) of one forward pass on one tile.

        Counts the convolutions and up-convolutions, which dominate; computed from the layer
        shapes on the meta device, so it costs no arithmetic. A 572x572 tile: about 0.3 TFLOP.
        """
        width = height if width is None else width
        total = 0

        def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
            nonlocal total
            kh, kw = module.kernel_size
            if isinstance(module, nn.ConvTranspose2d):  # every input pixel feeds kh*kw*out outputs
                total += 2 * inputs[0][0, 0].numel() * module.in_channels * module.out_channels * kh * kw
            else:
                total += 2 * output[0, 0].numel() * module.in_channels * module.out_channels * kh * kw

        meta = UNet(self.in_channels, self.num_classes, self.base_channels, self.depth,
                    0.0, self.variant).to("meta")
        hooks = [m.register_forward_hook(count) for m in meta.modules()
                 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        meta(torch.empty(1, self.in_channels, height, width, device="meta"))
        for hook in hooks:
            hook.remove()
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the valid part of ``x``: (N, C, 572, 572) -> (N, classes, 388, 388)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        check_input_size(x.shape[-2], self.depth)
        check_input_size(x.shape[-1], self.depth)

        skips = []
        for level in range(self.depth - 1):
            x = self.contracting[level](x)  # 572->570->568 | 284->282->280 | 140->138->136 | 68->66->64
            x = self.dropouts[level](x)  # identity, except at the 512-channel level (release)
            skips.append(x)  # copied to the expansive path: 568 (64) | 280 (128) | 136 (256) | 64 (512)
            x = self.pool(x)  # 568->284 | 280->140 | 136->68 | 64->32
        x = self.contracting[-1](x)  # bottom: 32->30->28, 1024 channels
        x = self.dropouts[-1](x)

        for upconv, block, skip in zip(self.upconvs, self.expansive, reversed(skips)):
            x = upconv(x)  # 28->56 | 52->104 | 100->200 | 196->392, channels halved
            skip = center_crop(skip, x.shape[-2:])  # 64->56 (4/side) | 136->104 (16) | 280->200 (40) | 568->392 (88)
            x = torch.cat([skip, x], dim=1)  # 512+512 | 256+256 | 128+128 | 64+64 channels
            x = block(x)  # 56->54->52 | 104->102->100 | 200->198->196 | 392->390->388
        return self.head(x)  # 1x1 conv: (N, 64, 388, 388) -> (N, classes, 388, 388)


class _PaddedTwoConvs(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            if batch_norm:  # BatchNorm's shift replaces the convolution's bias
                layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]
            else:
                layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class PaddedUNet(nn.Module):
    """Seed variant, NOT the paper: the popular tutorial U-Net (same-padding + BatchNorm).

    Deviation (ablation baseline only): padded 3x3 convolutions keep the input's size, so the
    output has the input's size; BatchNorm follows every convolution; features 64..512 plus a
    1024-channel bottleneck; transposed-convolution up-sampling. Two defects of the version it
    comes from are fixed: when sizes differ after up-sampling (odd sizes) the up-sampled map is
    resized *and then* concatenated with the skip, and the network ends in a plain 1x1 conv to the
    classes (the original ended in BatchNorm + ReLU, so logits could never be negative).

    ``batch_norm=False`` (ablation ``padded_no_bn``) drops the BatchNorm layers and gives the
    convolutions their biases back: same-padding alone, to separate its cost from BatchNorm's.
    ``dropout``: as in `UNet`, at the end of the contracting path: after the deepest level before the
    bottleneck (its output also feeds the skip) and after the bottleneck, so that the ablation differs
    from the paper's network in padding and BatchNorm only (0 disables it; the popular setup has none).
    """

    same_padding = True  # the output has the input's size: `tiling.predict` runs whole images

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 features: tuple[int, ...] = (64, 128, 256, 512), batch_norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.deep_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # the deepest level's output
        self.bottom_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # the bottleneck's
        self.downs = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.downs.append(_PaddedTwoConvs(channels, width, batch_norm))
            channels = width
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = _PaddedTwoConvs(features[-1], 2 * features[-1], batch_norm)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for width in reversed(features):
            self.ups.append(nn.ConvTranspose2d(2 * width, width, 2, 2))
            self.blocks.append(_PaddedTwoConvs(2 * width, width, batch_norm))
        self.head = nn.Conv2d(features[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, down in enumerate(self.downs):
            x = down(x)
            if level == len(self.downs) - 1:
                x = self.deep_dropout(x)  # as UNet: also what the skip carries
            skips.append(x)
            x = self.pool(x)
        x = self.bottom_dropout(self.bottleneck(x))
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: resize, then concatenate (fixed)
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)  # plain 1x1 conv (fixed): logits can be negative
