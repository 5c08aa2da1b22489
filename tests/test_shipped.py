"""The trained model in the box (results/isbi2012_cpu/model/): its files are the recorded ones, it loads safely,
it predicts what it predicted when it was shipped, and its bioimage.io package passes bioimageio.core's test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paper_unet.shipped import EXPECTED, MODEL, PACKAGE, SHIPPED, check_hashes, expected_crop

pytestmark = pytest.mark.skipif(not (SHIPPED / MODEL).is_file(), reason="the shipped model is not in this checkout")


def test_the_files_match_their_recorded_sha256():
    result = check_hashes(SHIPPED)
    assert set(result) == {MODEL, PACKAGE, EXPECTED} and all(result.values()), result


def test_it_loads_with_weights_only_and_predicts_the_stored_crop(isbi_dir):
    """Tolerance 1e-4 on P(cell): the stored values came from fp32 convolutions on an AVX512-BF16 CPU, and another
    CPU class (AVX2, other oneDNN kernels) sums in another order: float rounding of ~1e-6 per layer, not more."""
    import tifffile

    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.images import normalize
    from paper_unet.tiling import predict_stack

    state = torch.load(SHIPPED / MODEL, weights_only=True)
    assert "optimizer" not in state and state["provenance"]["seed"] == 0 and state["iteration"] == 8000
    model, config = model_from_checkpoint(SHIPPED / MODEL)
    assert config.name == "cpu" and config.model.base_channels == 16
    crop = expected_crop(tifffile.imread(isbi_dir / "train-volume.tif"))
    got = predict_stack(model, normalize(crop, config.data.normalize), tta=False, progress=False)
    np.testing.assert_allclose(got, np.load(SHIPPED / EXPECTED), atol=1e-4)


def test_the_package_passes_bioimageio_core(tmp_path):
    from bioimageio.core import test_model

    summary = test_model(SHIPPED / PACKAGE)
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details]


def test_predict_runs_with_the_shipped_model_in_one_line(isbi_dir, tmp_path):
    import tifffile

    from paper_unet.cli import main

    tifffile.imwrite(tmp_path / "in.tif", tifffile.imread(isbi_dir / "test-volume.tif")[:1, :200, :200])
    assert main(["predict", "--checkpoint", str(SHIPPED / MODEL), "--input", str(tmp_path / "in.tif"),
                 "--output", str(tmp_path / "p.tif"), "--save-mask", str(tmp_path / "m.tif"), "--quiet",
                 "--no-tta"]) == 0
    p = tifffile.imread(tmp_path / "p.tif")
    assert p.shape[-2:] == (200, 200) and p.min() < 0.1 and p.max() > 0.9  # membranes and cells, not a constant
