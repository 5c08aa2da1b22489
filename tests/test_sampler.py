"""The tile sampler (`paper_unet.sampler`): one large augmented tile per step, deterministic per (seed, stream,
index), its batched device path equal to the plain one-sample path."""

from __future__ import annotations

import pytest
import torch

from paper_unet.augment import augment
from paper_unet.sampler import TileSampler


def test_same_seed_same_sample_and_different_indices_differ(isbi_dir):
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:3, :200, :200]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:3, :200, :200]
    a = TileSampler(images, labels, tile=188, length=10, seed=5)
    b = TileSampler(images, labels, tile=188, length=10, seed=5)
    for i in (0, 7):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y)
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], TileSampler(images, labels, tile=188, length=10, seed=6)[0][0])
    assert not torch.equal(a[0][0], TileSampler(images, labels, tile=188, length=10, seed=5, stream=1)[0][0])


def test_sampler_shapes_follow_the_network(isbi_dir):
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:2]
    sampler = TileSampler(images, labels, length=2)
    image, label, weight = sampler[0]
    assert image.shape == (1, 572, 572) and label.shape == (388, 388) and weight.shape == (388, 388)
    assert label.dtype == torch.int64 and set(label.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="nearest valid"):
        TileSampler(images, labels, tile=570, length=1)
    with pytest.raises(IndexError):
        sampler[2]


def test_sampler_works_in_dataloader_workers(isbi_dir):
    import tifffile
    from torch.utils.data import DataLoader
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:2, :200, :200]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:2, :200, :200]
    sampler = TileSampler(images, labels, tile=188, length=4, seed=1)
    batches = list(DataLoader(sampler, batch_size=1, num_workers=2))
    for i, (image, _, _) in enumerate(batches):
        # workers run single-threaded, which changes vectorisation and so the last bit of a few values
        torch.testing.assert_close(image[0], sampler[i][0], atol=1e-6, rtol=0)


def _plain_sample(sampler: TileSampler, index: int):
    """Today's one-sample path (`augment`), the reference for the batched device path."""
    z, params = sampler.draw(index)
    image, label, weight = augment(sampler.images[z], sampler.labels[z], sampler.weights[z], params,
                                   sampler.tile, sampler.out_tile)
    return image[None], label.round().long(), weight


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("stream", [0, 1])
def test_batched_device_augmentation_equals_the_plain_path(isbi_dir, batch_size, stream):
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:3]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:3]
    sampler = TileSampler(images, labels, tile=188, length=8, seed=3, stream=stream)
    for start in range(0, 8, batch_size):
        x, y, w = sampler.batch(range(start, start + batch_size))
        assert x.shape == (batch_size, 1, 188, 188) and y.shape == w.shape == (batch_size, 4, 4)
        for b in range(batch_size):
            image, label, weight = _plain_sample(sampler, start + b)
            torch.testing.assert_close(x[b], image, atol=1e-6, rtol=0)
            assert torch.equal(y[b], label)
            torch.testing.assert_close(w[b], weight, atol=1e-6, rtol=0)
    # the same seed gives the same batch; another stream another one
    again = TileSampler(images, labels, tile=188, length=8, seed=3, stream=stream).batch([0, 1])
    assert torch.equal(again[0], sampler.batch([0, 1])[0])
