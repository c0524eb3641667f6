"""The `quadapter` command end to end, as a user runs it: real processes, real files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, SMALL_OVERRIDES, needs_shared_data
from wandb_offline import history, records

QUADAPTER = [sys.executable, "-m", "quadapter.cli"]
QUICK = [*SMALL_OVERRIDES, "eval.max_tokens=3000"]


def quadapter(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    proc = subprocess.run([*QUADAPTER, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"quadapter {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wandb_file(run_dir: Path) -> Path:
    (f,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return f


def test_default_run_records_results_csv_and_wandb_offline(tmp_path, small_model_dir):
    run_dir = tmp_path / "run"
    out = quadapter(*QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path).stdout
    assert "fp-fp-tiny-prose: completed" in out and "prose" in out and "code" in out
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["error"] is None
    assert (res["method"], res["model"], res["bits"], res["dataset"]) == ("fp", "tiny", "fp", "prose")
    assert set(res["metrics"]) == {"test/prose/ppl", "test/code/ppl"}
    assert all(1 < v < 512 for v in res["metrics"].values())  # a trained LM beats uniform over 512
    proto = res["protocol"]["code"]
    assert proto["context"] == 64 and proto["stride"] == 64 and proto["tokens"] == 3000
    assert proto["scored_tokens"] == 3000 - -(-3000 // 64) and proto["split"] == "test"
    assert proto["variant"] == "stdlib-code" and proto["joiner"] == "\n\n"
    assert len(res["config_hash"]) == 16 and res["timings"]["total_s"] > 0

    csv_lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "test/prose/ppl" in csv_lines[0]
    logged = history(wandb_file(run_dir))
    assert logged[0]["test/prose/ppl"] == pytest.approx(res["metrics"]["test/prose/ppl"])
    assert logged[0]["test/code/ppl"] == pytest.approx(res["metrics"]["test/code/ppl"])
    run_rec = next(r.run for r in records(wandb_file(run_dir)) if r.WhichOneof("record_type") == "run")
    assert run_rec.display_name == "fp-fp-tiny-prose" and "method:fp" in run_rec.tags
    assert any(r.WhichOneof("record_type") == "exit" for r in records(wandb_file(run_dir)))


def test_multirun_sweep_gives_one_finished_run_per_combination(tmp_path, small_model_dir):
    sweep = tmp_path / "sweep"
    quadapter("-m", *QUICK, "compare=fp", "eval.stride=32,64", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [r["protocol"]["prose"]["stride"] for r in results] == [32, 64]
    assert all(r["status"] == "completed" for r in results)
    assert results[0]["config_hash"] != results[1]["config_hash"]
    # overlapping windows score every token but the first; disjoint ones skip each window's first
    assert [r["protocol"]["code"]["scored_tokens"] for r in results] == [2999, 3000 - 47]
    runs = [next(r.run for r in records(wandb_file(d)) if r.WhichOneof("record_type") == "run")
            for d in sorted(p.parent for p in sweep.glob("*/results.json"))]
    assert {r.run_group for r in runs} == {sweep.name} and runs[0].run_id != runs[1].run_id
    report = subprocess.run([sys.executable, "-m", "quadapter.report", str(sweep)],
                            capture_output=True, text=True, check=True).stdout
    # the protocol guard: two strides never share a column; both fp runs fill the one fp row
    assert ("| method | bits | prose (ID) [stride 32] | prose (ID) [stride 64] | code (OOD) [stride 32] "
            "| code (OOD) [stride 64] |") in report
    assert report.count("| fp | fp |") == 1 and "—" not in report
    assert report.strip() == (sweep / "comparison.md").read_text().strip()  # the sweep callback's table


def test_a_method_on_the_command_line_replaces_the_comparison_axis(tmp_path, small_model_dir):
    # `quadapter -m` alone sweeps compare=fp,ptq,...; with method=fp the user wants fp only
    sweep = tmp_path / "sweep"
    quadapter("-m", *QUICK, "method=fp", "eval.stride=32,64", "logger=csv", f"hydra.sweep.dir={sweep}",
              cwd=tmp_path)
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert [(r["method"], r["adapter"], r["protocol"]["prose"]["stride"]) for r in results] == [
        ("fp", "none", 32), ("fp", "none", 64)]


def test_compare_and_method_together_are_refused_naming_both(tmp_path):
    from quadapter.comparison import check
    from quadapter.errors import ConfigError

    check(["method=qat", "bits=w4a4"])  # a method alone, or an entry alone, is fine
    check(["compare=ptq", "bits=w4a4"])
    check(["compare=null", "method=qat"])
    with pytest.raises(ConfigError, match=r"compare=ptq and method=qat both choose the method"):
        check(["compare=ptq", "method=qat"])


@needs_shared_data
def test_real_wikitext2_with_real_gpt2_tokenizer(tmp_path, random_gpt2_dir):
    model_dir = tmp_path / "gpt2-random"
    shutil.copytree(random_gpt2_dir, model_dir)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED_DATA / "gpt2-tokenizer" / f, model_dir / f)
    run_dir = tmp_path / "run"
    quadapter("model=gpt2", f"model.name_or_path={model_dir}", "dataset=wikitext2", "eval=real",
              "eval.max_tokens=1000", "eval.stride=64", "logger=csv", f"hydra.run.dir={run_dir}",
              cwd=tmp_path, env={"QUADAPTER_DATA_DIR": str(SHARED_DATA)})
    res = json.loads((run_dir / "results.json").read_text())
    assert set(res["protocol"]) == {"wikitext2", "ptb", "wikitext103", "lambada"}
    wt2 = res["protocol"]["wikitext2"]
    assert wt2["variant"] == "wikitext-2-raw-v1" and wt2["context"] == 128 and wt2["stride"] == 64
    assert wt2["tokens_in_split"] > 280_000  # the whole WikiText-2 test set, GPT-2 BPE
    # random weights: close to uniform over GPT-2's 50257 tokens
    assert all(20_000 < v < 150_000 for v in res["metrics"].values())


def test_missing_data_fails_clearly_and_records_the_failure(tmp_path, small_model_dir):
    run_dir = tmp_path / "run"
    proc = quadapter(f"model.name_or_path={small_model_dir}", "dataset=ptb", "eval=in_domain",
                     "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                     env={"QUADAPTER_DATA_DIR": str(tmp_path / "empty")}, check=False)
    assert proc.returncode == 1
    assert "quadapter: error:" in proc.stderr and "ptb.test.txt" in proc.stderr
    assert "Traceback" not in proc.stderr  # a fixable error is one message, not a stack trace
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "failed" and "ptb.test.txt" in res["error"]
    # the same command again: skipped by the resume rule, and still not a success (`&& next` stops)
    again = quadapter(f"model.name_or_path={small_model_dir}", "dataset=ptb", "eval=in_domain",
                      "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                      env={"QUADAPTER_DATA_DIR": str(tmp_path / "empty")}, check=False)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"quadapter: {run_dir} holds a failed run (DataError: " in again.stderr
    assert "pass resume.rerun_failed=true to retry it" in again.stderr


def test_printing_a_config_the_run_would_refuse_says_so(tmp_path):
    proc = quadapter("--cfg", "job", "seed=-1", cwd=tmp_path, check=False)
    assert proc.returncode == 0 and "seed: -1" in proc.stdout
    assert ("quadapter: warning: a run of this config would be refused: config error: seed=-1 is "
            "invalid: expected an integer in 0..4294967295") in proc.stderr
    ok = quadapter("--cfg", "job", "seed=3", cwd=tmp_path)
    assert "warning" not in ok.stderr


def test_a_failed_run_does_not_stop_the_sweep(tmp_path, small_model_dir):
    sweep = tmp_path / "sweep"
    proc = quadapter("-m", *QUICK, "compare=fp", "dataset=prose,wikitext2,code", "eval=in_domain",
                     "logger=csv", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env={"QUADAPTER_CACHE_DIR": str(small_model_dir.parents[1]),
                          "QUADAPTER_DATA_DIR": str(tmp_path / "no-data")}, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "wiki.test.raw" in proc.stderr
    assert "did not complete: 1_fp-tiny-wikitext2 (failed)" in proc.stderr
    status = {d.name: json.loads((d / "results.json").read_text())["status"]
              for d in sweep.iterdir() if d.is_dir()}
    assert status == {"0_fp-tiny-prose": "completed", "1_fp-tiny-wikitext2": "failed",
                      "2_fp-tiny-code": "completed"}
    assert (sweep / "comparison.md").is_file()  # the report still covers the runs that finished


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    proc = quadapter("model=gpt3", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/gpt3'" in proc.stderr and "tiny" in proc.stderr


def test_help_lists_every_group_and_option(tmp_path):
    out = quadapter("--help", cwd=tmp_path).stdout
    conf = Path(__file__).resolve().parents[1] / "conf"
    for group in [d for d in conf.iterdir() if d.is_dir() and d.name != "hydra"]:  # --help omits hydra/*
        options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        assert f"{group.name}: {options}" in out


def test_default_comparison_sweep_writes_table_plot_and_curves(tmp_path, small_model_dir):
    sweep = tmp_path / "cmp"
    out = quadapter("-m", *SMALL_OVERRIDES, "eval.max_tokens=2000", "eval.val_max_tokens=512",
                    "++method.train.steps=4", "++method.e2e.steps=4", "++method.blockwise.steps=5",
                    "trainer.val_check_interval=2", "++quantizer.calibration.blocks=8",
                    f"hydra.sweep.dir={sweep}", cwd=tmp_path).stdout
    table = (sweep / "comparison.md").read_text()
    for label in ("ptq", "ptq+smoothquant", "qat", "quadapter"):
        assert f"| {label} | w8a3 |" in table
    assert table.count("| w8a3 |") == 4 and "| fp | fp |" in table and "prose (ID)" in table
    assert "comparison.md" in out and (sweep / "curves.png").stat().st_size > 10_000
    runs = {json.loads(p.read_text())["run_name"]: p.parent for p in sweep.glob("*/results.json")}
    assert len(runs) == 5
    for name in ("qat-w8a3-tiny-prose", "quadapter-w8a3-tiny-prose"):
        logged = history(wandb_file(runs[name]))
        keys = {k for row in logged for k in row}
        assert {"train/ppl", "val/prose/ppl", "val/code/ppl", "test/prose/ppl"} <= keys
