"""Stage records (`paper_unet.stages`): each stage keeps its own record, never re-stamped."""

from __future__ import annotations

from paper_unet.stages import begin_stage, finish_stage, legacy, machines, read_stage


def test_a_stage_record_keeps_one_session_per_process_that_worked_on_it(tmp_path):
    config = {"optim": {"lr": 1e-3}}
    first = begin_stage(tmp_path, "fold0", config, command="first", precision="fp32", precision_detail="fp32 (why)",
                        device="cpu")
    assert read_stage(tmp_path)["status"] == "running"
    # interrupted: the next process continues the same record with its own session
    second = begin_stage(tmp_path, "fold0", config, command="second", precision="fp32", precision_detail="fp32 (why)",
                         device="cpu")
    done = finish_stage(tmp_path, second, {"iterations": 6})
    assert [s["command"] for s in done["sessions"]] == ["first", "second"]
    assert done["sessions"][0]["end_utc"] is None and done["sessions"][1]["wall_s"] >= 0
    assert done["status"] == "done" and done["did"] == {"iterations": 6} and read_stage(tmp_path) == done
    assert first["config_sha256"] == done["config_sha256"]
    # a finished stage done again in part (its scores were torn) keeps its sessions; a --restart starts afresh
    again = begin_stage(tmp_path, "fold0", config, command="third", precision="fp32", precision_detail="x",
                        device="cpu")
    assert [s["command"] for s in again["sessions"]] == ["first", "second", "third"] and again["status"] == "running"
    fresh = begin_stage(tmp_path, "fold0", config, command="fourth", precision="fp32", precision_detail="x",
                        device="cpu", fresh=True)
    assert [s["command"] for s in fresh["sessions"]] == ["fourth"]


def test_a_record_left_unfinished_by_its_process_is_completed_from_the_outputs(tmp_path):
    from paper_unet.stages import complete
    record = begin_stage(tmp_path, "fold1", {}, command="c", precision="fp32", precision_detail="x", device="cpu")
    done = complete(tmp_path, record, {"iterations": 6})
    assert done["status"] == "done" and done["did"] == {"iterations": 6} and "completed" in done
    assert done["sessions"][0]["end_utc"] is None and read_stage(tmp_path) == done


def test_machines_groups_stages_by_the_machine_they_ran_on(tmp_path):
    a = {"sessions": [{"cpu": "X", "cpu_class": "AVX2", "torch_threads": 2, "gpu": None}]}
    b = {"sessions": [{"cpu": "X", "cpu_class": "AVX512-BF16", "torch_threads": 2, "gpu": None},
                      {"gpu": "NVIDIA H100", "cuda": "12.8"}]}
    assert machines({"fold0": a, "final": b, "old": legacy(tmp_path, "old", write=False)}) == {
        "X (AVX2 CPU), 2 threads": ["fold0"], "X (AVX512-BF16 CPU), 2 threads": ["final"],
        "NVIDIA H100 (CUDA 12.8)": ["final"]}
