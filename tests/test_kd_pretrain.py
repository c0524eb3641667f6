"""method=kd_pretrain end to end on the small pretrained GPT-2: Kronecker and layer-dropped students,
with and without intermediate-layer KD from the loaded model; the saved student reloads with the same
outputs; what makes no sense is refused in one line."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from conftest import CONF, SMALL_OVERRIDES, refusal

from quadapter.runner import run


def make_cfg(small_model_dir, *overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*SMALL_OVERRIDES, "eval.max_tokens=2048", "logger=csv",
                                            "trainer.enable_progress_bar=false", f"paths.cache_dir={small_model_dir.parents[1]}",
                                            "method=kd_pretrain", "method.train.steps=4",
                                            "method.train.batch_size=2", "method.train.warmup_steps=1",
                                            "trainer.val_check_interval=2", "eval.val_max_tokens=256", *overrides])


@pytest.mark.parametrize("student,distill,embedding", [("kronecker", "kd", False), ("layer_drop", "kd", False),
                                                     ("kronecker", "none", True)])
def test_a_student_trains_saves_and_reloads(student, distill, embedding, tmp_path, small_model_dir, isolated_env):
    from quadapter.models.kronecker import KroneckerLinear
    from quadapter.models.loading import load_model

    over = ["method.student.kind=" + student, "distill=" + distill, f"method.student.embedding={embedding}"]
    if distill == "kd":
        over += ["distill.weights.attention=1.0"]
    res = run(make_cfg(small_model_dir, *over), tmp_path / "run")
    assert res["status"] == "completed", res["error"]
    record = res["student"]
    assert record["kind"] == student and record["params_after"] < record["params_before"]
    assert len(res["training"]["curves"]) >= 2  # held-out perplexity over the pretraining
    if distill == "kd":
        assert res["distill"]["layers"] == record["layers"]
        assert record["layers"] == ([0, 2] if student == "layer_drop" else [0, 1, 2])  # 1 of 2 blocks: uniform
    else:
        assert "distill" not in res and record["layers"] is None
    student_model, _ = load_model(record["saved"], arch="gpt2")
    factored = sum(isinstance(m, KroneckerLinear) for m in student_model.modules())
    assert factored == (2 * 4 + embedding if student == "kronecker" else 0)  # the embedding's factors too
    assert student_model.config.num_hidden_layers == (1 if student == "layer_drop" else 2)
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        again, _ = load_model(record["saved"], arch="gpt2")
        torch.testing.assert_close(student_model(ids).logits, again(ids).logits, rtol=0, atol=0)


def test_pretraining_data_is_a_slice_of_the_model_s_own_domains_and_a_factored_student_quantizes(
        tmp_path, small_model_dir, isolated_env):
    """method.data=pretraining: every pretraining domain of the loaded model, cut to train_tokens; the
    saved Kronecker student then goes through W8A8 PTQ with its factor linears as the quantizer sites."""
    from conftest import SMALL_SPEC

    res = run(make_cfg(small_model_dir, "method.data=pretraining", "method.train.train_tokens=3000",
                       "distill=kd"), tmp_path / "kd")
    assert res["status"] == "completed", res["error"]
    assert set(res["training"]["domain_tokens"]) == set(SMALL_SPEC["domains"])
    assert all(n == 3000 for n in res["training"]["domain_tokens"].values())
    assert res["training"]["train_tokens"] == 3000 * len(SMALL_SPEC["domains"])
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL_OVERRIDES, "eval.max_tokens=2048", "logger=csv", "method=ptq",
                                           "bits=w8a8", "quantizer.calibration.blocks=4",
                                           f"model.name_or_path={res['student']['saved']}",
                                           f"paths.cache_dir={small_model_dir.parents[1]}"])
    ptq = run(cfg, tmp_path / "ptq")
    assert ptq["status"] == "completed", ptq["error"]
    layers = ptq["quantization"]["quantized_layers"]
    assert len(layers) == 2 * 4 * 2 and all(name.endswith((".right", ".left")) for name in layers)
    fp_ppl = res["metrics"][f"test/{cfg.dataset.name}/ppl"]
    assert abs(ptq["metrics"][f"test/{cfg.dataset.name}/ppl"] / fp_ppl - 1) < 0.05  # W8A8 costs little


def test_what_kd_pretrain_cannot_do_is_refused_in_one_line():
    def refused(*overrides) -> str:
        return refusal("method=kd_pretrain", *overrides)

    assert "it quantizes nothing" in refused("bits=w8a8")
    assert "set distill.teacher=null" in refused("distill=kd", "distill.teacher=runs/x")
    assert "method.student.kind" in refused("method.student.kind=pruned")
    assert "method.student.compression" in refused("method.student.compression=0.5")
    assert "use method.data=dataset" in refused("method.data=pretraining", "model=smollm2-135m")


@pytest.mark.slow
def test_kngpt2_sweep_trains_every_student_then_quantizes_the_saved_ones(small_model_dir, tmp_path):
    """`quadapter -m experiment=kngpt2` on the small pretrained GPT-2 (embedded data): the six students
    train on the model's own pretraining slice, with ILKD where the row says, and the PTQ rows load the
    KD students from the sweep dir and quantize their factor linears at W8A8."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "quadapter.cli", "-m", "experiment=kngpt2", "model=tiny", *SMALL_OVERRIDES,
         "dataset=prose", "eval=embedded", "eval.max_tokens=1024", "eval.val_max_tokens=256", "logger=csv",
         "method.train.steps=4", "method.train.batch_size=2", "method.train.warmup_steps=1",
         "method.train.train_tokens=3000", "trainer.val_check_interval=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.parent.name.split("-")[0]: json.loads(p.read_text())
            for p in (tmp_path / "multirun" / "kngpt2").glob("*/results.json")}
    assert set(rows) == {"fp", "ptq", "kngpt2_2x", "kngpt2_2x_nokd", "kngpt2_4x", "kngpt2_4x_nokd", "distilgpt2",
                         "distilgpt2_nokd", "kngpt2_2x_w8a8", "distilgpt2_w8a8", "teacher_continued"}
    assert all(r["status"] == "completed" for r in rows.values()), {n: r.get("error") for n, r in rows.items()}
    students = {n: r for n, r in rows.items() if r["method"] == "kd_pretrain"}
    for name, r in students.items():
        assert r["bits"] == "fp" and r["training"]["steps"] == 4
        assert set(r["training"]["domain_tokens"]) == {"prose", "code"}
        assert ("distill" in r) == (not name.endswith("_nokd") and name != "teacher_continued")
        kind = "kronecker" if name.startswith("kngpt2") else "layer_drop" if name.startswith("distil") else "none"
        assert r["student"]["kind"] == kind
    assert students["kngpt2_4x"]["student"]["params_after"] < students["kngpt2_2x"]["student"]["params_after"]
    control = students["teacher_continued"]["student"]
    assert control["params_after"] == control["params_before"]  # every block kept: the teacher itself
    for name in ("kngpt2_2x", "distilgpt2"):
        ptq = rows[f"{name}_w8a8"]
        assert ptq["bits"] == "w8a8"
        assert ptq["model_source"]["dir"].endswith(f"multirun/kngpt2/{name}-tiny-prose/student")
    assert all(n.endswith((".right", ".left")) for n in rows["kngpt2_2x_w8a8"]["quantization"]["quantized_layers"])
