"""The README's main job, for real: pretrain the default embedded model, then run the comparison."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_readme_main_job_on_the_embedded_default(tmp_path):
    env = {**os.environ, "QUADAPTER_CACHE_DIR": str(tmp_path / "cache")}
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "quadapter.cli", "-m", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (model_dir,) = [p for p in (tmp_path / "cache" / "models").glob("embedded-*") if p.is_dir()]
    meta = json.loads((model_dir / "pretrain.json").read_text())
    results = {r["run_name"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    print(json.dumps({"pretrain": meta, **{k: r["metrics"] for k, r in results.items()}}, indent=1))
    assert meta["parameters"] > 2_000_000 and meta["train_tokens"] == 400 * 16 * 128
    assert len(results) == 5 and all(r["status"] == "completed" for r in results.values())
    fp = results["fp-tiny-prose"]["metrics"]
    # a real LM: far below the 4096-token uniform guess on both held-out domains
    assert fp["test/prose/ppl"] < 400 and fp["test/code/ppl"] < 150
    ptq = results["ptq-w8a3-tiny-prose"]["metrics"]
    assert ptq["test/prose/ppl"] > 1.3 * fp["test/prose/ppl"]  # W8A3 is where PTQ visibly hurts
    table = (sweep / "comparison.md").read_text()
    assert "| qat | w8a3 |" in table and "| quadapter | w8a3 |" in table
    assert (sweep / "curves.png").stat().st_size > 10_000
