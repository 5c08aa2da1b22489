"""The generated report describes the run it comes from (folds, tile, TTA), not a fixed setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from paper_unet.config import load_config
from paper_unet.metrics import THRESHOLDS
from paper_unet.report import prediction_method, single_tile, write_report


def fake_run(tmp_path, isbi_dir, folds: int, tta: bool, depth: int):
    """A run directory as `run_reproduction` leaves it, with made-up scores (the report's input)."""
    config = load_config("smoke", [f"run.folds={folds}", f"run.tta={str(tta).lower()}", f"model.depth={depth}",
                                   f"data.tile={188 if depth == 5 else 92}"])
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    size = 30 // folds
    scores = {"warping_error": 0.001, "rand_error": 0.2, "pixel_error": 0.06, "vrand_thinned": 0.9,
              "vinfo_thinned": 0.95, "warping_error_per_threshold": [0.001] * 10,
              **{key: [0.5] * len(THRESHOLDS) for key in ("pixel_fscore_per_threshold", "rand_fscore_per_threshold",
                                                          "vrand_thinned_per_threshold", "vinfo_thinned_per_threshold")}}
    summary = {"config": config.to_dict(), "device": "cpu", "submission": "s.tif",
               "provenance": {"command": "test", "commit": "0" * 40, "dirty": False, "cpu": "cpu", "cpu_cores": 2,
                              "torch_threads": 2, "gpu": None, "torch": "x", "python": "3", "platform": "p",
                              "date_utc": "now"},
               "timings_s": {"fold0_train": 60.0},
               "folds": {str(k): {"val_slices": list(range(k * size, (k + 1) * size)), **scores} for k in range(folds)}}
    (run / "summary.json").write_text(json.dumps(summary))
    tifffile.imwrite(run / "fold0" / "val_probabilities.tif", np.full((size, 512, 512), 0.5, np.float32))
    return run


def table(readme: str, header: str) -> list[list[str]]:
    """The body rows (cells) of the Markdown table whose header row starts with ``header``."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def provenance_table(readme: str) -> dict[str, str]:
    return {row[0]: row[1] for row in table(readme, "| | |")}


@pytest.mark.parametrize("folds, tta, depth", [(3, True, 5), (2, False, 3)])
def test_report_derives_folds_tile_and_tta_from_the_run(isbi_dir, tmp_path, monkeypatch, folds, tta, depth):
    import matplotlib.axes
    titles = []
    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: titles.append(label) or original(self, label, *a, **k))
    run = fake_run(tmp_path, isbi_dir, folds, tta, depth)
    readme = write_report(run, tmp_path / "results", isbi_dir).read_text()
    tile = {5: 700, 3: 552}[depth]
    assert single_tile({"model": {"depth": depth}}) == tile
    assert f"{tile} at depth {depth}" in readme
    size = 30 // folds
    assert f"{folds} contiguous blocks of {size} training slices" in readme
    assert f"{folds}-fold CV on the 30 training slices" in readme
    method = prediction_method({"run": {"tta": tta}})
    assert ("TTA (8 dihedral" in method) == tta and method in readme
    assert f"predicted P(cell), {method}" in titles


def test_learning_rate_check_report(isbi_dir, tmp_path):
    from paper_unet.config import load_config
    from paper_unet.data import load_isbi2012
    from paper_unet.report import write_lr_check
    from paper_unet.reproduce import tune_learning_rate

    config = load_config("smoke", ["optim.iterations=10", "run.log_every=1"])
    rows = tune_learning_rate(config, load_isbi2012(isbi_dir), tmp_path / "run", [1e-3, 3e-3], 4, fold=0,
                              progress=False, keep_schedule=True, validate_every=2)
    assert [len(r["validation"]) for r in rows] == [2, 2]  # steps 2 and 4, not the schedule's end
    readme = write_lr_check(tmp_path / "run", tmp_path / "results").read_text()
    rates = table(readme, "| lr |")
    assert [(row[0], row[1]) for row in rates] == [("0.001", "4"), ("0.003", "4")]  # rate, steps logged
    assert "val Rand @4" in next(line for line in readme.splitlines() if line.startswith("| lr |"))  # the header
    assert "first 4 steps of the profile's own schedule (10 iterations, x0.1 from iteration 8: not reached" in readme
    csv_text = (tmp_path / "results" / "loss_curves.csv").read_text().splitlines()
    assert csv_text[0].startswith("lr,iteration,loss") and len(csv_text) == 1 + 2 * 4
    assert (tmp_path / "results" / "loss_curves.png").stat().st_size > 1000


def test_cpu_label_names_what_the_profile_reduces():
    """The README's CPU label says what differs from the paper profile, and nothing else: the cpu
    profile keeps the paper's 572 tile, so only width and iterations are called reduced."""
    from paper_unet.report import _reduced
    assert _reduced(load_config("cpu").to_dict()) == ": reduced width, iterations"
    assert _reduced(load_config("smoke").to_dict()) == ": reduced width, tile, iterations"
    assert _reduced(load_config("paper").to_dict()) == ""


def test_a_shortened_gpu_run_says_so_at_the_top_and_in_its_table1_row(isbi_dir, tmp_path):
    """A GPU run of the paper profile cut to fewer iterations (issue 16: 19,000 of 50,000) is labelled as
    such, like a CPU run; the parallel-process wall time is reported as wall time, not as a sum of stages."""
    run = fake_run(tmp_path, isbi_dir, 3, True, 5)
    summary = json.loads((run / "summary.json").read_text())
    summary["config"] = load_config("paper", ["optim.iterations=19000"]).to_dict()
    summary["device"] = "cuda"
    summary["provenance"]["gpu"] = "NVIDIA H100 80GB HBM3"
    summary["wall_s"] = 675.7
    summary["timings_s"] = {"final_train": 635.1, "test_predict": 6.7}
    for k, fold in summary["folds"].items():
        fold["train_seconds"] = 640.0
    (run / "summary.json").write_text(json.dumps(summary))
    readme = write_report(run, tmp_path / "results", isbi_dir).read_text()
    banner = next(line for line in readme.splitlines() if line.startswith("**"))
    assert banner.startswith("**GPU run: reduced iterations") and "NOT the paper setting" in banner
    ours = [row[1] for row in table(readme, "| rank | group |") if row[1].startswith("ours")]
    assert ours and all("reduced iterations: 19000 iterations" in group for group in ours)
    assert "CPU run" not in readme
    wall = provenance_table(readme)["wall time"]
    assert wall.startswith("11.3 min from start to end") and "fold 0 10.7 min" in wall
