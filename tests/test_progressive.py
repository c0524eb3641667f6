"""method=progressive on a shrunk random BERT and the mirror's MRPC: the stages run in order from
each other's weights, the curves continue across them, the last stage is what is scored, and a run
killed inside a later stage resumes there and ends exactly where an unbroken one does."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import glue_cfg, needs_shared_data

from quadapter.errors import ConfigError, RunInterrupted
from quadapter.methods import check_config
from quadapter.schema.groups import bits_name as stage_bits_name
from quadapter.runner import run

pytestmark = needs_shared_data

STAGES = ("method.stages=[{weight: 8, act: null, steps: 2, lr: 1.0e-3},"
          "{weight: ternary, act: null, steps: 3, lr: 1.0e-3},"
          "{weight: binary, act: 8, steps: 2, lr: 1.0e-3}]")
SMALL = ["method=progressive", STAGES, "method.train.batch_size=4", "method.train.warmup_steps=0",
         "quantizer.calibration.blocks=8"]


def test_stages_run_in_order_and_the_curve_runs_across_them(tiny_bert_dir, tmp_path):
    res = run(glue_cfg(tiny_bert_dir, *SMALL), tmp_path)
    assert res["status"] == "completed" and res["bits"] == "wbin_a8"
    training = res["training"]
    assert training["phase"] == "progressive" and training["steps"] == 4 + 2 + 3 + 2
    stages = training["stages"]
    assert [(s["stage"], s["bits"], s["start_step"], s["steps"]) for s in stages] == [
        ("finetune", "fp", 0, 4), (0, "w8", 4, 2), (1, "wtern", 6, 3), (2, "wbin_a8", 9, 2)]
    # each stage's curve starts where the last ended (the drop its lower bits cost shows there)
    assert [p["step"] for p in training["curves"]] == [0, 2, 4, 4, 6, 6, 8, 9, 9, 11]
    assert [s["model_size"]["bits_per_quantized_weight"] for s in stages[1:]] == sorted(
        (s["model_size"]["bits_per_quantized_weight"] for s in stages[1:]), reverse=True)
    size = stages[-1]["model_size"]
    assert size == res["quantization"]["model_size"] and size["compression"] > 1
    q = res["quantization"]
    assert (q["bits"], q["weight"]["bits"]) == ({"weight": "binary", "act": 8}, "binary")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "finetune", "stage0", "stage1", "stage2"]
    assert all(0 <= v <= 100 for v in res["metrics"].values())


def test_a_killed_run_resumes_in_the_stage_it_reached(tiny_bert_dir, tmp_path, step_hook):
    calls = []

    def kill_in_stage_one(module, loss):  # the 8th training batch: fine-tune 4, stage 0 2, stage 1's 2nd
        import os
        import signal

        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    cfg = glue_cfg(tiny_bert_dir, *SMALL)
    step_hook["fn"] = kill_in_stage_one
    with pytest.raises(RunInterrupted, match="at step 2"):
        run(cfg, tmp_path / "killed")
    stopped = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert stopped["status"] == "interrupted"
    step_hook["fn"] = lambda module, loss: (calls.append(1), loss)[1]
    calls.clear()
    resumed = run(cfg, tmp_path / "killed")
    assert resumed["status"] == "completed"
    assert len(calls) == 1 + 2  # stage 1's last step, stage 2: nothing finished was trained again
    unbroken = run(cfg, tmp_path / "unbroken")
    assert resumed["metrics"] == unbroken["metrics"]
    assert resumed["training"]["curves"] == unbroken["training"]["curves"]


@pytest.mark.parametrize("overrides,message", [
    (["bits=w4"], "method.stages ends at weight='binary', act=8 but the run's bits are w4"),
    (["method.stages=[]"], "method.stages=[] is invalid: expected a non-empty list"),
    (["method.stages.1.weight=5.5"], "method.stages[1].weight=5.5 is invalid: expected an integer in "
                                     "2..16, ternary or binary, or null"),
    (["method.stages.0.weight=null"], "quantizes nothing"),
    (["quantizer=learned"], "bits.weight=binary takes its scale from the weights"),
    (["method.stages.2.augment=true"], "method.stages [2] ask for augmented data (augment: true) but "
                                       "task=glue has no augmenter"),
])
def test_bad_schedules_are_refused_in_one_line(tiny_bert_dir, overrides, message):
    with pytest.raises(ConfigError, match="config error") as e:
        check_config(glue_cfg(tiny_bert_dir, "method=progressive", *overrides))
    assert message in str(e.value)


def test_stage_names_follow_the_bits_presets():
    assert [stage_bits_name(w, a) for w, a in [(8, None), (2, 8), ("ternary", None), ("binary", 4)]] == [
        "w8", "w2a8", "wtern", "wbin_a4"]


def test_token_masking_masks_only_ordinary_tokens_reproducibly(tiny_bert_dir):
    from transformers import AutoTokenizer

    from quadapter.data.augment import TokenMasking

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    inputs = dict(tok(["the cat sat on the mat", "a dog"], ["it did", "ok"], padding=True, return_tensors="pt"))
    special = torch.tensor(tok.all_special_ids)
    ordinary = ~torch.isin(inputs["input_ids"], special) & inputs["attention_mask"].bool()
    everything = TokenMasking(1.0, tok.mask_token_id, tok.all_special_ids, seed=0)(inputs, [3, 4])["input_ids"]
    assert torch.equal(everything == tok.mask_token_id, ordinary)  # [CLS], [SEP], padding untouched
    assert torch.equal(TokenMasking(0.0, tok.mask_token_id, tok.all_special_ids, 0)(inputs, [3, 4])["input_ids"],
                       inputs["input_ids"])
    half = TokenMasking(0.5, tok.mask_token_id, tok.all_special_ids, seed=0)
    a, b = half(inputs, [3, 4])["input_ids"], half(inputs, [3, 4])["input_ids"]
    assert torch.equal(a, b)  # the batch's examples and the seed decide the mask: resumable
    assert not torch.equal(a, half(inputs, [4, 3])["input_ids"])
    share = (a == tok.mask_token_id).sum() / ordinary.sum()
    assert 0.2 < share < 0.8


def test_an_augmented_stage_trains_on_masked_batches(tiny_bert_dir, tmp_path):
    stages = ("method.stages=[{weight: 4, act: null, steps: 2, lr: 1.0e-3, augment: true},"
              "{weight: binary, act: 8, steps: 2, lr: 1.0e-3}]")
    common = ["method=progressive", stages, "method.train.batch_size=4", "method.train.warmup_steps=0",
              "quantizer.calibration.blocks=8", "task.finetune.steps=2"]
    masked = run(glue_cfg(tiny_bert_dir, *common, "task.augment.name=token_mask", "task.augment.prob=0.5"),
                 tmp_path / "masked")
    plain = run(glue_cfg(tiny_bert_dir, *common, stages.replace("augment: true", "augment: false")),
                tmp_path / "plain")
    assert [s.get("augment") for s in masked["training"]["stages"][1:]] == [True, False]
    m, p = masked["training"]["curves"], plain["training"]["curves"]
    assert [r["step"] for r in m] == [0, 2, 2, 4, 4, 6]
    assert m[:3] == p[:3]  # fine-tuning and stage 0's first point: the same model
    assert m[3]["train/loss_mean"] != p[3]["train/loss_mean"]  # stage 0 trained on other (masked) batches


@pytest.mark.slow
def test_glue_progressive_sweep_runs_every_row_from_its_seeds_saved_finetuning(tiny_bert_dir, tmp_path):
    """`quadapter -m experiment=glue_progressive`, one seed, on the shrunk BERT: the FP row runs first
    and saves its fine-tuning; every other row starts from it (none fine-tunes again), the KD rows
    distil from it, and each row ends at its own bits after its own schedule of 120 steps."""
    import subprocess
    import sys

    from conftest import glue_cfg_overrides

    sweep = tmp_path / "sweep"
    fp_dir = sweep / "fp-tiny-bert-glue_mrpc-seed0"
    proc = subprocess.run(
        [sys.executable, "-m", "quadapter.cli", "-m", "experiment=glue_progressive", "seed=0",
         *glue_cfg_overrides(tiny_bert_dir), "method.train.batch_size=4", "trainer.val_check_interval=40",
         "quantizer.calibration.blocks=8", f"hydra.sweep.dir={sweep}", f"task.finetune.load={fp_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    rows = {name.rsplit("-tiny-bert", 1)[0]: r for name, r in results.items()}
    assert set(rows) == {"fp", "direct-wtern", "direct-wbin", "progressive_stage1-wbin", "direct-wbin_a8",
                         "progressive-wbin_a8", "progressive_kd-wbin_a8", "progressive_kd_aug-wbin_a8"}
    assert all(r["status"] == "completed" for r in rows.values())
    assert rows["fp"]["saved"] == str(fp_dir / "finetuned")
    for name, r in rows.items():
        if name == "fp":
            continue
        stages = r["training"]["stages"]
        assert stages[0] == {"stage": "finetune", "bits": "fp", "start_step": 0, "steps": 0,
                             "loaded": str(fp_dir)}
        assert r["training"]["steps"] == 120 and r["bits"] == name.split("-")[1]
        assert ("distill" in r) == name.startswith("progressive_kd")
        if "distill" in r:
            assert r["distill"]["teacher"] == str(fp_dir)
        augmented = [s["stage"] for s in stages[1:] if s["augment"]]
        assert augmented == ([4, 5] if name.startswith("progressive_kd_aug") else [])
    assert [s["bits"] for s in rows["progressive_stage1-wbin"]["training"]["stages"][1:]] == [
        "w8", "w4", "w2", "wtern", "wbin"]
    assert len(rows["direct-wbin"]["training"]["stages"]) == 2  # the loaded fine-tuning, one stage
