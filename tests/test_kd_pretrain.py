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


@pytest.mark.parametrize("student,distill", [("kronecker", "kd"), ("layer_drop", "kd"), ("kronecker", "none")])
def test_a_student_trains_saves_and_reloads(student, distill, tmp_path, small_model_dir, isolated_env):
    from quadapter.models.kronecker import KroneckerLinear
    from quadapter.models.loading import load_model

    over = ["method.student.kind=" + student, "distill=" + distill]
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
    assert factored == (2 * 4 if student == "kronecker" else 0)
    assert student_model.config.num_hidden_layers == (1 if student == "layer_drop" else 2)
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        again, _ = load_model(record["saved"], arch="gpt2")
        torch.testing.assert_close(student_model(ids).logits, again(ids).logits, rtol=0, atol=0)


def test_what_kd_pretrain_cannot_do_is_refused_in_one_line():
    def refused(*overrides) -> str:
        return refusal("method=kd_pretrain", *overrides)

    assert "it quantizes nothing" in refused("bits=w8a8")
    assert "set distill.teacher=null" in refused("distill=kd", "distill.teacher=runs/x")
    assert "method.student.kind" in refused("method.student.kind=pruned")
    assert "method.student.compression" in refused("method.student.compression=0.5")
