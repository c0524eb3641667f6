"""End-to-end training (QAT) with overfitting curves, checkpoints and resume."""

import json

import pytest
import torch
from conftest import CONF, SMALL_OVERRIDES, run_context
from hydra import compose, initialize_config_dir

from quadapter.methods import qat, train_module
from quadapter.methods.training import train
from quadapter.models.loading import load_model
from quadapter.runner import run

QUICK = [*SMALL_OVERRIDES, "method=qat", "method.train.steps=6", "method.train.batch_size=4",
         "trainer.val_check_interval=3", "eval.max_tokens=1500", "eval.val_max_tokens=1024",
         "quantizer.calibration.blocks=8", "trainer.enable_progress_bar=false", "logger=csv"]


def make_cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*QUICK, *overrides])


def context(cfg, model_dir, run_dir, cache):
    model, tok = load_model(str(model_dir))
    return run_context(cfg, model, tok, run_dir, cache)


def test_qat_trains_weights_and_ranges_and_logs_curves(tmp_path, small_model_dir, isolated_env):
    ctx = context(make_cfg(), small_model_dir, tmp_path, isolated_env)
    block = ctx.model.transformer.h[0]
    before = {"ln": block.ln_1.weight.detach().clone(), "fc": block.mlp.c_fc.weight.detach().clone()}
    model = qat.apply(ctx)
    quantizers = [m for n, m in model.named_modules() if n.endswith("input_quantizer")]
    assert quantizers and all(q.range_parameters() for q in quantizers)
    assert not torch.equal(block.ln_1.weight, before["ln"])  # QAT moves every model weight
    assert not torch.equal(block.mlp.c_fc.layer.weight, before["fc"])
    training = ctx.summary["training"]
    assert [row["step"] for row in training["curves"]] == [0, 3, 6]
    assert {"val/prose/ppl", "val/code/ppl"} <= set(training["curves"][0])
    assert "train/ppl" in training["curves"][1] and training["curve_splits"] == {
        "prose": "validation", "code": "validation"}
    assert (tmp_path / "checkpoints" / "e2e" / "last.ckpt").is_file()


def test_qat_run_records_curves_in_results_and_csv(tmp_path, small_model_dir):
    res = run(make_cfg("paths.cache_dir=" + str(small_model_dir.parents[1])), tmp_path / "run")
    assert res["status"] == "completed" and res["method"] == "qat"
    assert set(res["metrics"]) == {"test/prose/ppl", "test/code/ppl"}
    curves = json.loads((tmp_path / "run" / "results.json").read_text())["training"]["curves"]
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ppl", "val/prose/ppl", "val/code/ppl", "test/prose/ppl"} <= set(header)
    assert len(curves) == 3


def test_interrupted_training_resumes_from_its_last_checkpoint(tmp_path, small_model_dir,
                                                              isolated_env, crash_training):
    cfg = make_cfg()
    crash = crash_training
    crash["at"] = 4

    def attempt():
        ctx = context(cfg, small_model_dir, tmp_path, isolated_env)
        groups = train_module.weight_groups(ctx.model, 1e-4, 0.0)
        return train(ctx, groups, cfg.method.train, "e2e", "method.train")

    with pytest.raises(RuntimeError, match="simulated crash"):
        attempt()
    ckpt = torch.load(tmp_path / "checkpoints" / "e2e" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    crash["at"] = -1
    summary = attempt()
    # the curve points before the crash come back from the checkpoint; none is duplicated
    assert [row["step"] for row in summary["curves"]] == [0, 3, 6]
