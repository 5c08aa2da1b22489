"""Studies of named config variants (the budget study; later the ablations) on one fold."""

from __future__ import annotations

import pytest

from paper_unet.data import load_isbi2012
from paper_unet.study import Variant, ablation_variants, markdown_table, parse_variant, read_rows, run_variants


def test_parse_variant():
    assert parse_variant("fast data.tile=572 optim.lr=1e-3") == Variant("fast", ["data.tile=572", "optim.lr=1e-3"])
    assert parse_variant("plain") == Variant("plain", [])
    with pytest.raises(ValueError, match="NAME key=value"):
        parse_variant("data.tile=572")


def test_variants_train_score_merge_and_keep_their_provenance(isbi_dir, tmp_path, monkeypatch):
    """Variants train and are scored into one CSV, each row with its settings. A finished variant's row keeps the
    commit, machine and date of the run that made it when the study is resumed elsewhere (from its stage record;
    for a fold from before stage records, from the CSV's row); a variant run again elsewhere replaces its row."""
    from conftest import CPU_A, CPU_B, TINY, on_cpu
    isbi = load_isbi2012(isbi_dir)
    csv_path = tmp_path / "study.csv"
    on_cpu(monkeypatch, CPU_A)
    run_variants("smoke", [Variant("a")], isbi, tmp_path / "runs", csv_path, fold=0, common=TINY, progress=False)
    first = read_rows(csv_path)[0]
    assert "Test CPU A (AVX512-BF16 CPU)" in first["hardware"] and first["hardware"].endswith("; fp32")
    on_cpu(monkeypatch, CPU_B)
    run_variants("smoke", [Variant("a"), Variant("b", ["optim.lr=2e-3", "optim.warmup=1"])], isbi, tmp_path / "runs",
                 csv_path, fold=0, common=TINY, progress=False)
    rows = read_rows(csv_path)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0] == first and "Test CPU A (AVX2 CPU)" in rows[1]["hardware"]
    assert rows[1]["lr"] == "0.002" and rows[1]["warmup"] == "1" and rows[0]["warmup"] == "0"
    assert all(r["status"] == "ok" and 0 <= float(r["pixel_error"]) <= 1 for r in rows)
    assert all(r["fold"] == "0" and r["seed"] == "0" and r["commit"] for r in rows)
    (tmp_path / "runs" / "a" / "fold0" / "stage.json").unlink()  # a fold finished before stage records
    run_variants("smoke", [Variant("a")], isbi, tmp_path / "runs", csv_path, fold=0, common=TINY, progress=False)
    assert {r["name"]: r for r in read_rows(csv_path)}["a"] == first
    # run "a" again with another seed: its row is replaced, "b" stays
    run_variants("smoke", [Variant("a")], isbi, tmp_path / "runs2", csv_path, fold=0, common=[*TINY, "run.seed=1"],
                 progress=False)
    rows = read_rows(csv_path)
    assert sorted(r["name"] for r in rows) == ["a", "b"] and next(r for r in rows if r["name"] == "a")["seed"] == "1"
    table = markdown_table(rows)
    assert table.count("\n") == 3 and "| b | `optim.lr=2e-3 optim.warmup=1` |" in table


def test_a_study_run_as_one_job_per_variant_is_gathered(isbi_dir, tmp_path, capsys):
    """docs/scaling_out.md's SLURM array: each job runs one variant into its own results folder (no shared CSV to
    race on); `paper-unet ablations --gather` merges them and writes the table, training nothing."""
    from conftest import TINY
    from paper_unet.cli import main
    isbi = load_isbi2012(isbi_dir)
    for name in ("full", "no_dropout"):
        job = tmp_path / "jobs" / name
        run_variants("smoke", ablation_variants([name]), isbi, tmp_path / "runs", job / "ablations.csv", fold=0,
                     common=TINY, progress=False, slices=job / "slices", curves=job / "curves")
    results = tmp_path / "results"
    assert main(["ablations", "--gather", str(tmp_path / "jobs" / "full"), str(tmp_path / "jobs" / "no_dropout"),
                 "--results", str(results)]) == 0
    rows = read_rows(results / "ablations.csv")
    assert [r["name"] for r in rows] == ["full", "no_dropout"]
    assert rows == [read_rows(tmp_path / "jobs" / n / "ablations.csv")[0] for n in ("full", "no_dropout")]
    assert (results / "slices" / "no_dropout.png").is_file() and (results / "curves" / "full_train.csv").is_file()
    assert "| no_dropout |" in (results / "README.md").read_text()
    assert main(["ablations", "--gather", str(tmp_path / "nothing"), "--results", str(results)]) == 2
    assert "has no rows" in capsys.readouterr().err


def test_put_section_replaces_or_inserts(tmp_path):
    from paper_unet.study import put_section
    readme = tmp_path / "README.md"
    readme.write_text("# R\n\n## Table\n\nx\n\n## Figures\n\n![f](f.png)\n")
    put_section(readme, "## Budget study\n\nfirst\n")
    assert readme.read_text() == "# R\n\n## Table\n\nx\n\n## Budget study\n\nfirst\n\n## Figures\n\n![f](f.png)\n"
    put_section(readme, "## Budget study\n\nsecond\n")
    text = readme.read_text()
    assert "second" in text and "first" not in text and text.count("## Budget study") == 1
    assert text.index("## Budget study") < text.index("## Figures")


def flat(config) -> dict:
    return {f"{section}.{key}": value for section, values in config.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}


def test_each_ablation_differs_from_the_full_method_in_its_one_setting():
    from paper_unet.config import load_config
    from paper_unet.study import ABLATIONS
    full = flat(load_config("cpu"))
    expected = {"no_border_term": {"data.w0"}, "plain_cross_entropy": {"data.weight_map"},
                "no_elastic": {"data.elastic_std"}, "no_tta": {"run.tta"}, "padded_unet": {"model.network"},
                "padded_no_bn": {"model.network", "model.padded_batch_norm"}, "no_dropout": {"model.dropout"},
                "no_augmentation": {"data.elastic_std", "data.rotate", "data.flip", "data.gray_values"}}
    assert set(ABLATIONS) == {"full", *expected}
    assert ABLATIONS["full"] == []
    for name, keys in expected.items():
        variant = flat(load_config("cpu", ABLATIONS[name]))
        assert {k for k in full if full[k] != variant[k]} == keys, name


def test_the_popular_padded_setup_differs_from_the_fair_one_in_dropout_and_labelled_area_only():
    """The *_popular rows (what the first padded rows measured): their fair namesakes less dropout, labelled on
    the whole tile; runnable by name only, not part of the default study."""
    from paper_unet.config import load_config
    from paper_unet.study import ABLATIONS, POPULAR, ablation_variants
    for name, fair in (("padded_unet_popular", "padded_unet"), ("padded_no_bn_popular", "padded_no_bn")):
        a, b = flat(load_config("cpu", ABLATIONS[fair])), flat(load_config("cpu", POPULAR[name]))
        assert {k for k in a if a[k] != b[k]} == {"model.dropout", "data.label_whole_tile"}, name
    assert not set(POPULAR) & {v.name for v in ablation_variants()}
    assert [v.name for v in ablation_variants(["padded_unet_popular"])] == ["padded_unet_popular"]


def test_the_precision_control_differs_from_the_full_method_in_precision_only():
    """full_fp32: the full method with bf16 and channels_last forced off (fp32 NCHW on every machine), so that the
    rows `auto` trained in fp32 on an AVX2-only CPU can be set beside a full method of the same precision; runnable
    by name only."""
    from paper_unet.config import load_config
    from paper_unet.fastpath import resolve
    from paper_unet.study import CONTROLS, ablation_variants
    full, control = load_config("cpu"), load_config("cpu", CONTROLS["full_fp32"])
    a, b = flat(full), flat(control)
    assert {k for k in a if a[k] != b[k]} == {"run.bf16", "run.channels_last"}
    path = resolve(control.run.bf16, control.run.channels_last, "cpu")
    assert (path.bf16, path.channels_last) == (False, False)
    assert "full_fp32" not in {v.name for v in ablation_variants()}
    assert [v.name for v in ablation_variants(["full_fp32"])] == ["full_fp32"]


def test_the_padded_network_is_labelled_on_the_unpadded_networks_centre(isbi_dir):
    """Fair: the same 92 input tile (smoke: depth 3), labels on its 52 x 52 centre, and the loss of the padded
    network's 92 x 92 output taken on that centre; the popular setup labels the whole tile."""
    import torch
    from paper_unet.config import load_config
    from paper_unet.loss import weighted_cross_entropy
    from paper_unet.model import center_crop
    from paper_unet.step import train_step
    from paper_unet.train import build_model, training_sampler
    isbi = load_isbi2012(isbi_dir)
    images, labels = isbi.train_images[:2, :128, :128], isbi.train_labels[:2, :128, :128]
    fair = load_config("smoke", ['model.network="padded"'])
    x, y, w = training_sampler(fair, images, labels, torch.device("cpu"), 2).batch([0])
    assert (x.shape[-1], y.shape[-1], w.shape[-1]) == (92, 52, 52)
    torch.manual_seed(0)
    model = build_model(fair).eval()  # eval: no dropout, BatchNorm's running stats, so two passes agree
    with torch.no_grad():
        expected = weighted_cross_entropy(center_crop(model(x), (52, 52)), y, w)
    loss, logits = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, w)
    assert logits.shape[-1] == 92 and torch.allclose(loss, expected)
    popular = load_config("smoke", POPULAR_SMOKE)
    _, y, _ = training_sampler(popular, images, labels, torch.device("cpu"), 2).batch([0])
    assert y.shape[-1] == 92
    with pytest.raises(ValueError, match="padded network only"):
        load_config("smoke", ["data.label_whole_tile=true"])


POPULAR_SMOKE = ['model.network="padded"', "model.dropout=0.0", "data.label_whole_tile=true"]


def test_ablation_switches_train_and_predict(isbi_dir, tmp_path):
    """The padded network and the plain loss run through the same training and prediction code."""
    import numpy as np
    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.config import load_config
    from paper_unet.model import PaddedUNet
    from paper_unet.tiling import predict
    from paper_unet.train import train
    isbi = load_isbi2012(isbi_dir)
    images, labels = isbi.train_images[:2, :128, :128], isbi.train_labels[:2, :128, :128]
    for name, overrides in (("padded", ['model.network="padded"']), ("plain", ["data.weight_map=false"])):
        config = load_config("smoke", ["optim.iterations=2", *overrides])
        result = train(config, images, labels, tmp_path / name, progress=False)
        assert np.isfinite(result.last_loss)
        model, _ = model_from_checkpoint(tmp_path / name / "last.pt")
        probabilities = predict(model, images[0].astype(np.float32) / 255, tta=True)
        assert probabilities.shape == (2, 128, 128)
    assert isinstance(model_from_checkpoint(tmp_path / "padded" / "last.pt")[0], PaddedUNet)


def ablation_script_args(isbi_dir, tmp_path, results):
    from conftest import REPO
    return ["bash", str(REPO / "reproduction" / "run_ablations.sh"), "--profile", "smoke", "--data-dir", str(isbi_dir),
            "--out", str(tmp_path / "runs"), "--results", str(results), "--quiet",
            "--set", "optim.iterations=2", "--set", "run.validate_every=2", "--set", "run.checkpoint_every=2"]


def test_run_ablations_end_to_end_on_three_variants(isbi_dir, tmp_path):
    """bash reproduction/run_ablations.sh --only full no_tta padded_unet (tiny budget): trained, scored, tabled,
    drawn; the padded network too. Every variant: the slow test below (about 3 minutes: scoring the
    untrained networks' noisy maps dominates)."""
    import subprocess
    results = tmp_path / "results"
    args = ablation_script_args(isbi_dir, tmp_path, results)
    done = subprocess.run(args[:2] + ["--only", "full", "no_tta", "padded_unet"] + args[2:], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(results / "ablations.csv")
    assert [r["name"] for r in rows] == ["full", "no_tta", "padded_unet"]
    assert all(r["status"] == "ok" and r["fold"] == "2" for r in rows)
    readme = (results / "README.md").read_text()
    assert "| padded_unet |" in readme and "u-net, paper Table 1" in readme
    assert (results / "slices" / "padded_unet.png").is_file()
    # the trained variants' logs are kept (no_tta trains nothing) and drawn
    kept = sorted(path.name for path in (results / "curves").iterdir())
    assert kept == ["full_train.csv", "full_val.csv", "padded_unet_train.csv", "padded_unet_val.csv"]
    assert (results / "curves" / "full_val.csv").read_text() == (tmp_path / "runs" / "full" / "fold2" /
                                                                 "val_log.csv").read_text()
    assert (results / "ablations_curves.png").stat().st_size > 1000
    assert "ablations_curves.png" in readme and "(full, padded_unet; the other rows' logs were not kept)" in readme


@pytest.mark.slow
def test_run_ablations_end_to_end_on_a_smoke_budget(isbi_dir, tmp_path):
    """bash reproduction/run_ablations.sh: every variant trained (tiny budget), scored, tabled, drawn;
    a second call with --only re-reads the finished variants instead of training them again."""
    import subprocess
    results = tmp_path / "results"
    args = ablation_script_args(isbi_dir, tmp_path, results)
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(results / "ablations.csv")
    assert [r["name"] for r in rows] == [v.name for v in ablation_variants()]  # the default study, in its order
    assert all(r["status"] == "ok" and r["fold"] == "2" for r in rows)
    no_tta = next(r for r in rows if r["name"] == "no_tta")
    assert no_tta["train_min"] == "(= full)" and no_tta["tta"] == "False"
    readme = (results / "README.md").read_text()
    assert "| padded_unet |" in readme and "u-net, paper Table 1" in readme and "beyond the seed spread" in readme
    assert (results / "ablations_slice.png").stat().st_size > 1000
    assert (results / "slices" / "_labels.png").is_file() and (results / "slices" / "no_dropout.png").is_file()
    again = subprocess.run(args[:2] + ["--only", "full", "no_tta"] + args[2:], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no checkpoint" not in again.stderr  # nothing trained again
    assert len(read_rows(results / "ablations.csv")) == 10


def test_run_ablations_help_and_bad_variant(tmp_path):
    import subprocess
    from conftest import REPO
    script = str(REPO / "reproduction" / "run_ablations.sh")
    done = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--only" in done.stdout and "ablations" in done.stdout
    from paper_unet.study import ablation_variants
    with pytest.raises(ValueError, match="unknown variant"):
        ablation_variants(["no_such_thing"])


def test_adopt_a_finished_network_of_the_same_config(isbi_dir, tmp_path, capsys):
    """--full-from: the fold network of another run with exactly the full variant's config is predicted
    and scored instead of trained again; another config or an unfinished training is refused."""
    import json

    import torch
    from paper_unet.config import load_config
    from paper_unet.reproduce import run_reproduction
    from paper_unet.study import adopt_network
    from paper_unet.train import train
    isbi = load_isbi2012(isbi_dir)
    common = ["optim.iterations=2", "run.validate_every=2", "run.checkpoint_every=2"]
    config = load_config("smoke", common)
    run_reproduction(config, isbi, tmp_path / "isbi", progress=False, only_fold=0)
    source = tmp_path / "isbi" / "fold0"
    with pytest.raises(ValueError, match=r"differs in run\.seed"):
        adopt_network(source, tmp_path / "x" / "fold0", load_config("smoke", [*common, "run.seed=1"]))
    killed = load_config("smoke", [*common, "run.checkpoint_every=1"])
    train(killed, isbi.train_images[:2], isbi.train_labels[:2], tmp_path / "killed" / "fold0", progress=False,
          stop_after=1)
    with pytest.raises(ValueError, match="stopped at iteration 1 of 2"):
        adopt_network(tmp_path / "killed" / "fold0", tmp_path / "y" / "fold0", killed)
    with pytest.raises(ValueError, match="does not exist"):
        adopt_network(tmp_path / "nothing", tmp_path / "z" / "fold0", config)
    capsys.readouterr()
    csv_path = tmp_path / "ablations.csv"
    rows = run_variants("smoke", [Variant("full"), Variant("no_tta", ["run.tta=false"], reuse="full")], isbi,
                        tmp_path / "runs", csv_path, fold=0, common=common, progress=False,
                        adopt={"full": tmp_path / "isbi"})
    assert "no checkpoint" not in capsys.readouterr().err  # adopted, not trained from scratch
    adopted = torch.load(tmp_path / "runs" / "full" / "fold0" / "last.pt", weights_only=False)["model"]
    original = torch.load(source / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(adopted[k], original[k]) for k in original)
    original_scores = json.loads((source / "metrics.json").read_text())
    assert float(rows[0]["rand_error"]) == pytest.approx(original_scores["rand_error"])  # the same network
    assert float(rows[0]["train_min"]) == round(original_scores["train_seconds"] / 60, 1)  # its own training time
    assert rows[1]["train_min"] == "(= full)" and rows[1]["status"] == "ok"
    assert adopt_network(source, tmp_path / "runs" / "full" / "fold0", config) is False  # already there

