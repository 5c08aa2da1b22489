"""Measured figures are data (results/measurements.json), read by the code that quotes them, tied to the results
they come from; none is typed into code, profile comments or scripts; README's numbers match results/."""

from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import REPO
from paper_unet import measurements
from paper_unet.fastpath import CpuInfo, decide

DATA = json.loads((REPO / "results" / "measurements.json").read_text())
ENTRIES = {k: v for k, v in DATA.items() if not k.startswith("_")}
FIGURE = re.compile(r"\b\d+(\.\d+)?(-\d+(\.\d+)?)?x\b|\d\s*steps/s|\b\d+(\.\d+)?(-\d+(\.\d+)?)? ?(min|h|ms)\b")


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_every_measurement_says_where_it_comes_from(key):
    entry = ENTRIES[key]
    assert {"value", "unit", "what", "machine", "commit", "date_utc", "source"} <= set(entry)
    source = entry["source"].split(":")[0]
    assert (REPO / source).is_file(), source
    if source == "results/performance.md":  # the section it was measured in exists
        title = entry["source"].split(": ", 1)[1].split(", with")[0]
        assert f"## {title}\n" in (REPO / source).read_text()


def test_the_run_wall_times_are_those_of_the_recorded_runs():
    cpu = json.loads((REPO / "results" / "isbi2012_cpu" / "summary.json").read_text())
    paper = json.loads((REPO / "results" / "isbi2012_paper" / "summary.json").read_text())
    assert measurements.value("cpu_profile_wall_min_avx512bf16") == round(
        cpu["timings_s"]["total_this_invocation"] / 60, 1)
    assert measurements.value("paper_19000_parallel_wall_min_h100") == round(paper["wall_s"] / 60, 1)


def test_the_fast_path_rule_quotes_the_file():
    native = CpuInfo("x", "AVX512", avx512_bf16=True, amx=False)
    avx2 = CpuInfo("x", "AVX2", avx512_bf16=False, amx=False)
    assert f"ran {ENTRIES['cpu_bf16_speedup_width16']['value']:g}x fp32" in decide("cpu", native)[2]
    slow = f"{ENTRIES['avx2_bf16_slowdown_width16']['value']:g}-{ENTRIES['avx2_bf16_slowdown_full']['value']:g}x"
    assert slow in decide("cpu", avx2)[2]
    assert f"{ENTRIES['h100_bf16_ratio_full']['value']:g}x" in decide("cuda")[2]


def test_without_the_file_the_text_names_it(monkeypatch):
    monkeypatch.setattr(measurements, "_load", lambda: {})
    assert measurements.say("cpu_bf16_speedup_width16") == \
        "(measured: results/measurements.json, cpu_bf16_speedup_width16)"


def test_no_measured_figure_is_typed_into_code_profiles_or_scripts():
    files = [*sorted((REPO / "paper_unet").glob("*.py")), *sorted((REPO / "paper_unet" / "profiles").glob("*.toml")),
             *sorted((REPO / "reproduction").glob("*.sh"))]
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in files if path.name != "measurements.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if FIGURE.search(line)]
    assert not found, "\n".join(found)


def table_row(readme: str, start: str) -> list[float]:
    line = next(line for line in readme.splitlines() if line.startswith(f"| {start}"))
    return [float(cell) for cell in line.strip("|").split("|")[1:]]


@pytest.mark.parametrize("profile, row", [("cpu", "ours, `cpu` profile, 3-fold CV mean"),
                                          ("paper", "ours, `paper` profile, 19,000 iterations, 3-fold CV mean")])
def test_readme_results_tables_are_the_recorded_runs(profile, row):
    readme = (REPO / "README.md").read_text()
    mean = json.loads((REPO / "results" / f"isbi2012_{profile}" / "summary.json").read_text())["cv_mean"]
    shown = table_row(readme, row)
    for value, key, digits in zip(shown, ["warping_error", "rand_error", "pixel_error", "vrand_thinned",
                                          "vinfo_thinned"], [6, 4, 4, 4, 4]):
        assert value == round(mean[key], digits), key


def test_readme_seed_noise_is_the_ablations():
    with open(REPO / "results" / "ablations" / "ablations.csv", newline="") as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    spread = abs(float(rows["full_seed1"]["rand_error"]) - float(rows["full"]["rand_error"]))
    assert f"moves by about {spread:.2f} from seed to seed" in " ".join((REPO / "README.md").read_text().split())


def test_readme_padding_finding_is_the_ablations_at_one_precision():
    """README: at the same precision (fp32) the padded network has "about twice" the Rand error, and precision alone
    moves it by less than the seed noise (results/ablations/ablations.csv)."""
    with open(REPO / "results" / "ablations" / "ablations.csv", newline="") as handle:
        rand = {r["name"]: float(r["rand_error"]) for r in csv.DictReader(handle)}
    readme = " ".join((REPO / "README.md").read_text().split())
    assert 1.75 <= rand["padded_no_bn"] / rand["full_fp32"] < 2.5 and "about twice the Rand error" in readme
    assert abs(rand["full_fp32"] - rand["full"]) < abs(rand["full_seed1"] - rand["full"])
    assert "precision alone (fp32 against bf16) moves it by less than the seed noise" in readme


def test_readme_large_image_rates_are_the_benchmarks():
    """README quotes the streamed prediction's seconds per megapixel that bench_large.py recorded."""
    readme = " ".join((REPO / "README.md").read_text().split())
    for key in ("predict_s_per_megapixel_cpu", "predict_s_per_megapixel_cpu_tta", "predict_s_per_megapixel_paper",
                "predict_s_per_megapixel_paper_tta"):
        assert measurements.value(key) is not None, key
        assert measurements.say(key) in readme, key
