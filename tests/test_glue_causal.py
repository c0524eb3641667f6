"""A causal LM family as a GLUE classifier (GPT-2: GPT2ForSequenceClassification, a new linear on the last
real token): the adapter's classifier variant, the pad token a GPT-2 lacks, FP fine-tuning on the mirror's
MRPC, and a Kronecker-factored student fine-tuned with ILKD from that FP teacher (method=fp distill=kd)."""

from __future__ import annotations

import torch
from conftest import CONF, SHARED_DATA, SMALL_OVERRIDES, needs_shared_data, refusal
from hydra import compose, initialize_config_dir

from quadapter.runner import run


def gpt2_glue_cfg(small_model_dir, *overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            "task=glue", "model=tiny", *SMALL_OVERRIDES, f"paths.cache_dir={small_model_dir.parents[1]}",
            f"paths.data_dir={SHARED_DATA}", "task.max_length=64", "task.finetune.steps=4",
            "task.finetune.batch_size=8", "trainer.val_check_interval=2", "eval.val_max_examples=48",
            "eval.train_eval_examples=16", "logger=csv", "trainer.enable_progress_bar=false", *overrides])


def test_a_gpt2_loads_as_a_classifier_with_a_new_head_and_a_pad_token(small_model_dir):
    from quadapter.models.arch import for_model
    from quadapter.models.loading import load_model
    from quadapter.models.sites import quant_sites

    model, tok = load_model(str(small_model_dir), arch="gpt2", head="sequence_classification", num_labels=2)
    arch = for_model(model)
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert arch.family == "gpt2" and arch.head == "sequence_classification" and arch.head_sites == {"classifier": "score"}
    assert arch.task_head() == ("score",)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    layers, _ = quant_sites(model, ["attn.c_attn", "classifier"])
    assert [s.name for s in layers][-1] == "score"
    batch = tok(["a short one", "a longer sentence than the first one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = model(**batch).logits[0]
        alone = model(**tok(["a short one"], return_tensors="pt")).logits[0]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)  # classified at its last real token


def test_a_family_without_a_classifier_is_refused_on_glue():
    assert "a family with a sequence_classification head" in refusal("task=glue", "model=smollm2-135m")


@needs_shared_data
def test_a_factored_student_fine_tunes_with_ilkd_from_the_fp_teacher(small_model_dir, tmp_path):
    from quadapter.models.decompose import kronecker_decompose, save_decomposed
    from quadapter.models.loading import load_model

    teacher = run(gpt2_glue_cfg(small_model_dir, "task.finetune.save=true"), tmp_path / "teacher")
    assert teacher["status"] == "completed", teacher["error"]
    assert {"test/glue_mrpc/accuracy", "test/glue_mrpc/f1"} <= set(teacher["metrics"])
    lm, tok = load_model(str(small_model_dir), arch="gpt2")
    spec = kronecker_decompose(lm, None, compression=2)["spec"]
    student_dir = save_decomposed(lm, tok, spec, tmp_path / "student")
    res = run(gpt2_glue_cfg(small_model_dir, f"model.name_or_path={student_dir}", "distill=kd",
                            f"distill.teacher={tmp_path / 'teacher'}", "distill.weights.attention=1.0"),
              tmp_path / "kd")
    assert res["status"] == "completed", res["error"]
    assert res["distill"]["teacher"] == str(tmp_path / "teacher") and res["training"]["steps"] == 4
    assert {"test/glue_mrpc/accuracy", "test/glue_mrpc/f1"} <= set(res["metrics"])


def test_fp_fine_tuning_with_kd_needs_its_teacher():
    assert "distill=kd needs distill.teacher" in refusal("task=glue", "method=fp", "distill=kd")


def test_the_schema_knows_a_gpt2_classifier_s_sites():
    from quadapter.schema import validate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["task=glue", "model=tiny", "method=ptq", "quantizer.sites=[attn.c_attn,classifier]"])
    validate(cfg)  # the classifier variant's head site
    assert "lm_head" in refusal("task=glue", "model=tiny", "method=ptq", "quantizer.sites=[lm_head]")
