"""Failures lose nothing: resume rule, interrupts, non-finite training, reproducibility, recorded provenance."""

import json
import signal

import pytest
from conftest import CONF, SMALL_OVERRIDES, sigterm_once_at
from hydra import compose, initialize_config_dir

from quadapter.errors import RunInterrupted, TrainingError, UserError
from quadapter.report.load import read_metrics_csv
from quadapter.resume import decide, previous_results
from quadapter.runner import run
from quadapter.tracking import config_differences, config_hash

QAT = [*SMALL_OVERRIDES, "method=qat", "method.train.steps=6", "method.train.batch_size=4",
       "trainer.val_check_interval=3", "eval.max_tokens=1500", "eval.val_max_tokens=1024",
       "quantizer.calibration.blocks=8", "trainer.enable_progress_bar=false", "logger=csv"]


def make_cfg(*overrides, base=QAT):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def read(run_dir):
    return json.loads((run_dir / "results.json").read_text())


# --- the resume rule ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "skip_completed", "rerun_failed", "action"), [
    ("completed", True, False, "skip"), ("completed", False, False, "run"),
    ("failed", True, False, "skip"), ("failed", True, True, "resume"),
    ("running", True, False, "resume"), ("interrupted", True, False, "resume")])
def test_resume_rule(tmp_path, status, skip_completed, rerun_failed, action):
    previous = {"status": status, "config_hash": "abc"}
    assert decide(previous, "abc", tmp_path, skip_completed, rerun_failed) == action
    assert decide(None, "abc", tmp_path) == "run"


def test_a_dir_of_another_config_is_refused_and_left_as_it_is(tmp_path):
    with pytest.raises(UserError, match="different config .*abc.*xyz.*hydra.sweep.dir"):
        decide({"status": "completed", "config_hash": "abc"}, "xyz", tmp_path)


def test_unreadable_results_count_as_interrupted(tmp_path):
    (tmp_path / "results.json").write_text('{"status": "compl')
    previous = previous_results(tmp_path / "results.json")
    assert decide(previous, "abc", tmp_path) == "resume"


def test_a_completed_run_is_skipped_and_a_changed_config_refused(tmp_path, small_model_dir):
    cfg = make_cfg(base=[*SMALL_OVERRIDES, "eval.max_tokens=500", "logger=csv",
                         f"paths.cache_dir={small_model_dir.parents[1]}"])
    first = run(cfg, tmp_path)
    before = (tmp_path / "results.json").read_bytes()
    assert run(cfg, tmp_path) == first  # skipped: nothing recomputed or rewritten
    assert (tmp_path / "results.json").read_bytes() == before
    with pytest.raises(UserError, match=r"different config .*theirs -> this: eval.max_tokens: 500 -> 400\)"):
        run(make_cfg("eval.max_tokens=400", base=[*SMALL_OVERRIDES, "logger=csv",
                                                 f"paths.cache_dir={small_model_dir.parents[1]}"]),
            tmp_path)
    assert (tmp_path / "results.json").read_bytes() == before


def test_config_differences_name_every_changed_added_or_removed_key_and_ignore_paths():
    old = {"eval": {"max_tokens": 500, "stride": None}, "paths": {"data_dir": "/a"}, "seed": 0,
           "method": {"lr": {"weights": 1e-4}}}
    new = {"eval": {"max_tokens": 400, "stride": None}, "paths": {"data_dir": "/b"}, "seed": 0,
           "method": {"lr": {"weights": 1e-4, "ranges": None}}, "bits": {"name": "w4a4"}}
    assert config_differences(old, new) == [
        "bits.name: absent -> \"w4a4\"", "eval.max_tokens: 500 -> 400", "method.lr.ranges: absent -> null"]
    assert config_differences(new, new) == []


# --- interrupts and non-finite training --------------------------------------------------------------

# steps 30, a curve point every 10: the interruption falls between curve points and checkpoints
LONGER = {"qat": ["method.train.steps=30", "method.train.batch_size=2", "method.train.warmup_steps=2"],
          "quadapter": ["method.e2e.steps=30", "method.e2e.batch_size=2", "method.e2e.warmup_steps=2",
                        "method.blockwise.steps=2"]}


@pytest.mark.parametrize("method", ["qat", "quadapter"])
def test_interrupted_at_any_step_resumes_bit_identically(tmp_path, small_model_dir, step_hook, method):
    cfg = make_cfg(f"method={method}", *LONGER[method], "trainer.val_check_interval=10",
                   f"paths.cache_dir={small_model_dir.parents[1]}",
                   base=[o for o in QAT if not o.startswith("method")])
    step_hook["fn"] = sigterm_once_at(12)
    with pytest.raises(RunInterrupted, match="SIGTERM at step 13"):
        run(cfg, tmp_path)
    res = read(tmp_path)
    assert res["status"] == "interrupted" and "re-run the same command" in res["error"]
    assert [row["step"] for row in res["training"]["curves"]] == [0, 10]  # kept from the stopped run
    resumed = run(cfg, tmp_path)
    assert resumed["status"] == "completed"
    assert resumed["attempts"] == [{"status": "interrupted", "error": res["error"]}]
    logged = read_metrics_csv(tmp_path / "csv" / "metrics.csv")  # the first attempt's rows are kept
    assert [p["step"] for p in logged if "val/prose/ppl" in p] == [0, 10, 20, 30]
    # same batches in the same order, same dropout masks, same running train loss: the resumed run
    # ends exactly where an unbroken one does, curves included
    unbroken = run(cfg, tmp_path / "unbroken")
    assert resumed["metrics"] == unbroken["metrics"]
    assert resumed["training"]["curves"] == unbroken["training"]["curves"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_loss_fails_the_run_naming_the_step(tmp_path, small_model_dir, step_hook, bad):
    cfg = make_cfg(f"paths.cache_dir={small_model_dir.parents[1]}")
    step_hook["fn"] = lambda module, loss: loss * float(bad) if module.global_step == 4 else loss
    with pytest.raises(TrainingError, match=rf"non-finite training loss \(-?{bad}\) at step 4"):
        run(cfg, tmp_path)
    res = read(tmp_path)
    assert res["status"] == "failed" and "step 4" in res["error"] and "lower the learning rates" in res["error"]
    assert [row["step"] for row in res["training"]["curves"]] == [0, 3]  # computed before the failure
    assert res["training"]["stopped_at_step"] == 4


def test_interrupted_in_the_last_batch_keeps_the_final_curve_point(tmp_path, small_model_dir, step_hook):
    """6 steps, curve every 4: the last point (step 6) comes from the end of training, which a run
    resumed at max_steps never reaches again, so the checkpoint must already hold it."""
    cfg = make_cfg("trainer.val_check_interval=4", f"paths.cache_dir={small_model_dir.parents[1]}")
    step_hook["fn"] = sigterm_once_at(5)  # the last batch
    with pytest.raises(RunInterrupted, match="SIGTERM at step 6"):
        run(cfg, tmp_path)
    resumed = run(cfg, tmp_path)
    unbroken = run(cfg, tmp_path / "unbroken")
    assert [row["step"] for row in resumed["training"]["curves"]] == [0, 4, 6]
    assert resumed["training"]["curves"] == unbroken["training"]["curves"]
    assert resumed["metrics"] == unbroken["metrics"]


def test_a_diverging_loss_stops_at_its_curve_point_as_non_finite(tmp_path, small_model_dir, step_hook):
    """A loss that grows without being inf overflows exp() in the running train perplexity: the run
    fails with the documented one-line message and keeps its curve up to there."""
    cfg = make_cfg(f"paths.cache_dir={small_model_dir.parents[1]}", "trainer.precision=16-mixed")
    step_hook["fn"] = lambda module, loss: loss * 1e4 if module.global_step >= 4 else loss
    with pytest.raises(TrainingError, match=r"non-finite curve value at step 6: train/ppl=inf"):
        run(cfg, tmp_path)
    res = read(tmp_path)
    assert res["status"] == "failed" and res["error"].startswith("TrainingError: non-finite curve value")
    assert [row["step"] for row in res["training"]["curves"]] == [0, 3, 6]
    assert res["training"]["curves"][-1]["train/ppl"] == float("inf")
    assert res["training"]["precision"] == "bf16-mixed"  # what Lightning ran on a CPU, not 16-mixed


# --- reproducibility and provenance ------------------------------------------------------------------

@pytest.mark.slow  # three QAT runs (CI runs it)
def test_same_config_twice_gives_identical_metrics_and_curves(tmp_path, small_model_dir):
    cfg = make_cfg(f"paths.cache_dir={small_model_dir.parents[1]}")
    a, b = run(cfg, tmp_path / "a"), run(cfg, tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    assert a["training"]["curves"] == b["training"]["curves"]
    assert a["config_hash"] == b["config_hash"] == config_hash(cfg)
    seed1 = run(make_cfg("seed=1", f"paths.cache_dir={small_model_dir.parents[1]}"), tmp_path / "c")
    assert seed1["metrics"] != a["metrics"]  # the seed reaches data order and calibration


def test_results_record_versions_and_commit_and_no_secret(tmp_path, small_model_dir, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)  # mode stays offline (conftest): nothing is uploaded
    cfg = make_cfg("logger=wandb", "logger.wandb.mode=offline", "eval.max_tokens=500",
                   f"paths.cache_dir={small_model_dir.parents[1]}",
                   base=[*SMALL_OVERRIDES, "trainer.enable_progress_bar=false"])
    res = run(cfg, tmp_path)
    env = res["environment"]
    assert env["versions"]["torch"] and env["versions"]["pytorch-lightning"] and env["versions"]["transformers"]
    assert env["git_commit"] is None or len(env["git_commit"].removesuffix("-dirty")) == 40
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]
