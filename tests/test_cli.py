"""The command line: help, evaluate, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import METRICS_REFERENCE_DIR
from paper_unet.cli import main


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    assert "evaluate" in capsys.readouterr().out


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "paper_unet", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "paper_unet" in done.stdout


def test_evaluate_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["evaluate", "--proposal", str(METRICS_REFERENCE_DIR / "d2_prob.tif"),
                 "--labels", str(METRICS_REFERENCE_DIR / "d2_gt.tif"), "--per-threshold",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "warping error" in printed and "per threshold" in printed
    expected = json.loads((METRICS_REFERENCE_DIR / "reference_values.json").read_text())["d2"]
    assert json.loads(out.read_text())["rand_error"] == pytest.approx(expected["rand_error"], abs=1e-12)


def test_evaluate_membrane_flag_inverts(tmp_path, capsys):
    proposal = tifffile.imread(METRICS_REFERENCE_DIR / "d2_prob.tif")
    inverted = tmp_path / "membrane.tif"
    membrane = (1.0 - proposal).astype(np.float32)
    tifffile.imwrite(inverted, membrane, photometric="minisblack")
    out = tmp_path / "b.json"
    labels = METRICS_REFERENCE_DIR / "d2_gt.tif"
    assert main(["evaluate", "--proposal", str(inverted), "--labels", str(labels), "--membrane",
                 "--json", str(out)]) == 0
    from paper_unet import metrics
    expected = metrics.evaluate(1.0 - membrane, tifffile.imread(labels)).as_dict()
    written = json.loads(out.read_text())
    for key, value in expected.items():
        np.testing.assert_allclose(np.array(written[key], float), np.array(value, float), err_msg=key)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.tif", "not found"),
    (lambda d: (d / "bad.tif").write_bytes(b"not a tiff") and d / "bad.tif", "not a readable TIFF"),
    (lambda d: d, "directory"),
])
def test_evaluate_bad_files_say_what_is_wrong(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code = main(["evaluate", "--proposal", str(path), "--labels", str(METRICS_REFERENCE_DIR / "d2_gt.tif")])
    assert code == 2 and message in capsys.readouterr().err


def test_evaluate_truncated_tiff(tmp_path, capsys):
    data = (METRICS_REFERENCE_DIR / "d2_prob.tif").read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    code = main(["evaluate", "--proposal", str(cut), "--labels", str(METRICS_REFERENCE_DIR / "d2_gt.tif")])
    assert code == 2
    assert "truncated" in capsys.readouterr().err


def test_download_command_reports_present_data(isbi_dir, tmp_path, capsys):
    import shutil
    for name in ("train-volume.tif", "train-labels.tif", "test-volume.tif"):
        shutil.copy(isbi_dir / name, tmp_path / name)
    assert main(["download", "--data-dir", str(tmp_path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "without test labels" in captured.out and "already present" in captured.err


def test_download_command_unreachable_url_fails_clearly(tmp_path, capsys):
    code = main(["download", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/x.zip", "--quiet"])
    assert code == 2 and "failed after 3 attempts" in capsys.readouterr().err


def test_train_then_predict_writes_the_submission_format(isbi_dir, tmp_path, capsys):
    """`paper-unet train` then `paper-unet predict`: float32 P(cell) in [0, 1], the input's shape."""
    run = tmp_path / "run"
    assert main(["train", "--profile", "smoke", "--data-dir", str(isbi_dir), "--out", str(run), "--quiet",
                 "--set", "optim.iterations=2", "--fold", "0"]) == 0
    assert (run / "last.pt").is_file() and (run / "val_log.csv").is_file()
    stack = tifffile.imread(isbi_dir / "test-volume.tif")[:2, :100, :130]
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    out = tmp_path / "out" / "probs.tif"
    assert main(["predict", "--checkpoint", str(run / "last.pt"), "--input", str(tmp_path / "in.tif"),
                 "--output", str(out), "--tta", "--quiet"]) == 0
    probabilities = tifffile.imread(out)
    assert probabilities.shape == (2, 100, 130) and probabilities.dtype == np.float32
    assert 0 <= probabilities.min() and probabilities.max() <= 1
    assert "TTA on" in capsys.readouterr().out


def test_fold_out_of_range_is_a_clear_error(isbi_dir, tmp_path, capsys):
    code = main(["train", "--profile", "smoke", "--data-dir", str(isbi_dir), "--out", str(tmp_path), "--fold", "3"])
    assert code == 2 and "0 to 2" in capsys.readouterr().err


def test_only_fold_and_only_final_together_are_refused(capsys):
    assert main(["reproduce", "--profile", "smoke", "--only-fold", "0", "--only-final"]) == 2
    assert "--only-fold and --only-final are separate processes" in capsys.readouterr().err
