"""A parallel sweep killed half-way (SIGKILL) finishes when the same command runs again."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SMALL_OVERRIDES

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")

# 2 x 2: fast fp runs first, slower QAT runs after them, two at a time in joblib worker processes
SWEEP = ["-m", *SMALL_OVERRIDES, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "compare=fp,qat",
         "seed=0,1", "++method.train.steps=40", "++method.train.batch_size=4", "trainer.val_check_interval=10",
         "++quantizer.calibration.blocks=8", "eval.max_tokens=1500", "eval.val_max_tokens=512",
         "trainer.enable_progress_bar=false", "logger=csv"]


def statuses(sweep):
    out = {}
    for path in sweep.glob("*/results.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())["status"]
        except (OSError, json.JSONDecodeError, KeyError):
            out[path.parent.name] = "unreadable"
    return out


@pytest.mark.slow  # ~1 min: two sweep processes and four runs (CI runs it)
def test_killed_parallel_sweep_completes_only_the_missing_runs(tmp_path, small_model_dir):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "quadapter.cli", *SWEEP, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "QUADAPTER_CACHE_DIR": str(small_model_dir.parents[1])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while list(statuses(sweep).values()).count("completed") < 2:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, f"no two runs completed: {statuses(sweep)}"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its joblib workers, mid-sweep
        proc.wait()
    killed = statuses(sweep)
    done = {name for name, status in killed.items() if status == "completed"}
    assert {"0_fp-tiny-prose", "1_fp-tiny-prose"} <= done and len(done) < 4, killed
    kept = {name: (sweep / name / "results.json").read_bytes() for name in done}

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    final = statuses(sweep)
    assert sorted(final) == ["0_fp-tiny-prose", "1_fp-tiny-prose", "2_qat-w8a3-tiny-prose",
                             "3_qat-w8a3-tiny-prose"] and set(final.values()) == {"completed"}
    for name, before in kept.items():  # completed runs were skipped, not run again
        assert (sweep / name / "results.json").read_bytes() == before
    for name in set(killed) - done:  # interrupted runs resumed: their first attempt is on record
        attempts = json.loads((sweep / name / "results.json").read_text())["attempts"]
        assert attempts == [{"status": "running", "error": None}]
    seeds = {json.loads((sweep / n / "results.json").read_text())["seed"] for n in final}
    assert seeds == {0, 1}
