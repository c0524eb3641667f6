"""The README's main job, for real: pretrain the default embedded model, then evaluate it."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_readme_main_job_on_the_embedded_default(tmp_path):
    env = {**os.environ, "QUADAPTER_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "quadapter.cli", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fp-fp-tiny-prose: completed" in proc.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    (model_dir,) = [p for p in (tmp_path / "cache" / "models").glob("embedded-*") if p.is_dir()]
    meta = json.loads((model_dir / "pretrain.json").read_text())
    print(json.dumps({"pretrain": meta, "metrics": res["metrics"]}, indent=1))
    assert meta["parameters"] > 2_000_000 and meta["train_tokens"] == 400 * 16 * 128
    # a real LM: far below the 4096-token uniform guess on both held-out domains
    assert res["metrics"]["test/prose/ppl"] < 400 and res["metrics"]["test/code/ppl"] < 120
    assert res["protocol"]["code"]["scored_tokens"] > 100_000  # the whole code test split
