"""The bioimage.io export (export.py): bioimageio.core's own test passes on the package, and its whole-image
and tiled predictions equal the project's predict; offline."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO
from paper_unet.config import load_config
from paper_unet.export import (ARCHITECTURE_FILE, PredictionModule, architecture_source, export_bioimageio,
                               package_geometry)
from paper_unet.model import UNet
from paper_unet.tiling import predict
from paper_unet.train import train

bioimageio_core = pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed "
                                                                "(pip install -e '.[bioimageio]')")


@pytest.fixture(scope="module")
def isbi(isbi_dir):
    return (tifffile.imread(isbi_dir / "train-volume.tif")[:3], tifffile.imread(isbi_dir / "train-labels.tif")[:3],
            tifffile.imread(isbi_dir / "test-volume.tif")[0])


@pytest.fixture(scope="module")
def checkpoint(isbi, tmp_path_factory):
    """A smoke network (width 4, depth 3) after 6 steps: what matters is that the package computes the same."""
    out = tmp_path_factory.mktemp("run")
    train(load_config("smoke", ['data.normalize="dtype"']), isbi[0], isbi[1], out, progress=False)
    return out / "last.pt"


def test_the_geometry_by_hand():
    """Depth 5: 92 px of context per side (572 -> 388), 92 + 92 + 4 makes a side on the 16-px grid a valid input
    (S + 188 = 16k + 188, and 188 is the smallest valid input), the halo is 92 rounded up to 96, and the
    smallest side with room for two halos is 13 x 16 = 208. Depth 3: period 4, context 20 (92 -> 52)."""
    assert package_geometry(5) == {"period": 16, "context": 92, "extra": 4, "halo": 96, "min_size": 208}
    assert package_geometry(3) == {"period": 4, "context": 20, "extra": 0, "halo": 20, "min_size": 44}


def test_the_wrapped_network_equals_predict_at_several_sizes(isbi):
    """The module that is traced: mirrored context inside, P(cell) out, equal to `predict` (no TTA) on any
    image whose sides are on the 16-px grid, also after tracing at another size."""
    torch.manual_seed(0)
    model = UNet(base_channels=4).eval()
    g = package_geometry(5)
    module = PredictionModule(model, g["context"], g["context"] + g["extra"]).eval()
    image = isbi[2].astype(np.float32) / 255
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.from_numpy(image[None, None, :256, :256]), check_trace=False)
        for h, w in ((512, 512), (208, 320), (256, 256)):
            got = traced(torch.from_numpy(np.ascontiguousarray(image[None, None, :h, :w])))[0, 0].numpy()
            np.testing.assert_allclose(got, predict(model, image[:h, :w])[1], atol=1e-6)


def test_the_architecture_file_needs_torch_only_and_builds_the_network_the_state_dict_fits(tmp_path):
    """The package's architecture file imports nothing but torch and math (checked in its syntax tree, and by
    running it in a fresh interpreter where paper_unet cannot be imported); the network it builds takes the
    state dict of our wrapped network strictly and computes exactly what ours computes (the same code)."""
    source = architecture_source()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"__future__", "math", "torch", "torch.nn.functional"}

    torch.manual_seed(0)
    ours = PredictionModule(UNet(base_channels=4, depth=3), 20, 20).eval()
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        expected = ours(x)
    (tmp_path / ARCHITECTURE_FILE).write_text(source)
    torch.save(ours.state_dict(), tmp_path / "state_dict.pt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, runpy, torch; sys.modules['paper_unet'] = None; "
            f"ns = runpy.run_path({str(tmp_path / ARCHITECTURE_FILE)!r}); "
            "net = ns['prediction_module'](base_channels=4, depth=3, before=20, after=20); "
            f"net.load_state_dict(torch.load({str(tmp_path / 'state_dict.pt')!r}, weights_only=True), strict=True); "
            f"torch.save(net(torch.load({str(tmp_path / 'x.pt')!r})).detach(), {str(tmp_path / 'y.pt')!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = torch.load(tmp_path / "y.pt")
    assert got.shape == (1, 1, 64, 96) and torch.equal(got, expected)


def test_bioimageio_core_passes_the_package_and_its_tiled_prediction_equals_predict(checkpoint, isbi, tmp_path):
    from bioimageio.core import (create_prediction_pipeline, load_model_description, predict as bioimageio_predict,
                                 test_model)

    package = export_bioimageio(checkpoint, tmp_path / "model.zip", sample=isbi[0], authors=["A. Tester"])
    summary = test_model(package)
    assert summary.status == "passed", summary.display() or [(d.name, [e.msg for e in d.errors])
                                                             for d in summary.details]
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "://" not in rdf and "http" not in rdf  # validation would try to reach every URL
    assert "scale_linear" in rdf and "gain: 0.00392156862745098" in rdf  # uint8 / 255 inside the package
    assert "mode: reflect" in rdf and "halo: 20" in rdf
    names = set(zipfile.ZipFile(package).namelist())
    assert {"weights.pt", "state_dict.pt", ARCHITECTURE_FILE, "test_input.npy", "test_output.npy", "cover.png",
            "README.md"} <= names
    assert "pytorch_state_dict:" in rdf and "callable: prediction_module" in rdf and "parent: pytorch_state_dict" in rdf
    tested = {str(detail.loc) for detail in summary.details} | {detail.name for detail in summary.details}
    assert any("pytorch_state_dict" in text for text in tested) and any("torchscript" in text for text in tested)
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "## Validation" in readme and "10.1007/978-3-319-24574-4_28" in readme

    from paper_unet.checkpoint import model_from_checkpoint
    descr = load_model_description(package)
    network, _ = model_from_checkpoint(checkpoint)
    expected = predict(network, isbi[2].astype(np.float32) / 255)[1]
    raw = isbi[2][None, None].astype(np.float32)  # a test slice the package has not seen, as a user gives it
    for weights in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weight_format=weights)
        for blocksize in (None, 0):  # the whole image; small blocks (so it really tiles: 16 blocks of 52 px)
            out = bioimageio_predict(model=pipeline, inputs=raw, blocksize_parameter=blocksize)
            got = out.members["probability"].data.values[0, 0]
            np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{weights}, blocksize {blocksize}")


def test_percentile_normalisation_travels_inside_the_package(isbi, tmp_path):
    """12-bit data in a 16-bit file train with percentile normalisation (auto); the package normalises raw
    images the same way (scale_range with the checkpoint's percentiles, then clip), so bioimageio.core's
    prediction on the raw uint16 image equals `paper-unet predict`'s."""
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict as bioimageio_predict
    from bioimageio.core import test_model

    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.images import normalize

    twelve = isbi[0].astype(np.uint16) * 16
    out = tmp_path / "run"
    train(load_config("smoke", ['data.normalize="percentile"', "data.percentiles=[2.0, 98.0]"]),
          normalize(twelve, "percentile", [2.0, 98.0]), isbi[1], out, progress=False)
    package = export_bioimageio(out / "last.pt", tmp_path / "model.zip", sample=twelve)
    assert test_model(package).status == "passed"
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "scale_linear" not in rdf and "scale_range" in rdf and "min_percentile: 2.0" in rdf and "clip" in rdf
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "normalised inside the package" in readme and "percentile 2 to 0" in readme
    network, _ = model_from_checkpoint(out / "last.pt")
    image = twelve[2].astype(np.uint16)  # a slice the package has not seen, raw
    expected = predict(network, normalize(image[None], "percentile", [2.0, 98.0])[0])[1]
    pipeline = create_prediction_pipeline(load_model_description(package), weight_format="pytorch_state_dict")
    got = bioimageio_predict(model=pipeline, inputs=image[None, None].astype(np.float32)).members["probability"]
    np.testing.assert_allclose(got.data.values[0, 0], expected, atol=1e-4)


def test_bad_input_gives_clear_errors(checkpoint, isbi, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint .* not found"):
        export_bioimageio(tmp_path / "missing.pt", tmp_path / "m.zip", sample=isbi[0])
    stranger = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, stranger)
    with pytest.raises(ValueError, match="not a paper_unet checkpoint"):
        export_bioimageio(stranger, tmp_path / "m.zip", sample=isbi[0])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        export_bioimageio(tmp_path / "text.pt", tmp_path / "m.zip", sample=isbi[0])
    with pytest.raises(ValueError, match=r"\.zip"):
        export_bioimageio(checkpoint, tmp_path / "model.yaml", sample=isbi[0])
    with pytest.raises(FileNotFoundError, match="does not exist: create it first"):
        export_bioimageio(checkpoint, tmp_path / "no" / "such" / "m.zip", sample=isbi[0])
    with pytest.raises(ValueError, match="too small"):
        export_bioimageio(checkpoint, tmp_path / "m.zip", sample=isbi[0][0, :40, :40])


def test_the_command_line_and_its_message_without_the_extra(checkpoint, isbi_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "paper_unet", "export", "--checkpoint", str(checkpoint),
                           "--output", str(tmp_path / "model.zip"), "--data-dir", str(isbi_dir), "--author", "Me"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and (tmp_path / "model.zip").is_file()
    # as if the extra were not installed: the command says how to install it
    code = ("import sys; sys.modules['bioimageio'] = None; from paper_unet.cli import main; "
            f"sys.exit(main(['export', '--checkpoint', {str(checkpoint)!r}, '--output', {str(tmp_path / 'b.zip')!r}, "
            f"'--data-dir', {str(isbi_dir)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and 'pip install "paper_unet[bioimageio]"' in done.stderr
