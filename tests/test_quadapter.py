"""method=quadapter: only α learns, phase 1 lowers its L2, folding leaves a plain quantized model."""

import json

import pytest
import torch
from conftest import CONF, SMALL_OVERRIDES, run_context
from hydra import compose, initialize_config_dir

from quadapter.adapters import ChannelScale
from quadapter.data import eval_sets
from quadapter.evaluation import perplexity
from quadapter.methods import check_config, quadapter
from quadapter.models.loading import load_model

QUICK = [*SMALL_OVERRIDES, "method=quadapter", "bits=w8a4", "method.blockwise.steps=15",
         "method.e2e.steps=4", "method.e2e.batch_size=4", "trainer.val_check_interval=2",
         "eval.val_max_tokens=512", "quantizer.calibration.blocks=16",
         "trainer.enable_progress_bar=false", "logger=csv"]


def make_cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*QUICK, *overrides])


def plain_weights(model):
    """Model weights by their original names (QuantSim wrappers add a `.layer`)."""
    return {n.replace(".layer.", "."): p.detach().clone() for n, p in model.named_parameters()
            if "quantizer" not in n and "input_scale" not in n}


@pytest.mark.parametrize("sites", [["ln1_qkv", "ln2_fc"], ["ln1_qkv", "ln2_fc", "v_proj"]])
def test_only_alpha_learns_and_folding_is_exact(tmp_path, small_model_dir, isolated_env,
                                               monkeypatch, sites):
    cfg = make_cfg(f"adapter.sites=[{','.join(sites)}]")
    model, tok = load_model(str(small_model_dir))
    original = plain_weights(model)
    ctx = run_context(cfg, model, tok, tmp_path, isolated_env)
    ids = torch.randint(0, len(tok), (256,), generator=torch.Generator().manual_seed(0))
    seen = {}
    fold = quadapter.fold_scales

    def checked_fold(sim, model, scales):
        assert all(torch.equal(v, original[k]) for k, v in plain_weights(model).items())
        assert any(not torch.equal(s.log_alpha, torch.zeros_like(s.log_alpha)) for s in scales.values())
        model.eval()
        seen["unfolded"] = perplexity(model, ids, 64, 64)[0]
        fold(sim, model, scales)

    monkeypatch.setattr(quadapter, "fold_scales", checked_fold)
    folded = quadapter.apply(ctx)
    assert not any(isinstance(m, ChannelScale) for m in folded.modules())
    assert perplexity(folded, ids, 64, 64)[0] == pytest.approx(seen["unfolded"], rel=1e-4)
    units = ctx.summary["quadapter"]["blockwise"]["units"]
    assert len(units) == 2 and all(u["l2_after"] < u["l2_before"] for u in units)
    assert [r["step"] for r in ctx.summary["training"]["curves"]] == [0, 2, 4]
    saved = tmp_path / "folded"
    reloaded, _ = load_model(str(saved))
    quantizers = [m for n, m in folded.named_modules() if n.endswith("_quantizer")]
    for q in quantizers:
        q.disable()
    with torch.no_grad():  # the saved checkpoint is the folded model, quantizers aside
        window = ids[None, :64]
        assert torch.allclose(reloaded(window).logits, folded(window).logits, atol=1e-5)
    encodings = json.loads((saved / "quantizer_encodings.json").read_text())
    assert len(encodings) == len(quantizers) and all(e["bits"] in (4, 8) for e in encodings.values())
    changed = {k for k, v in plain_weights(folded).items() if not torch.equal(v, original[k])}
    assert changed and all(".ln_" in k or "c_attn" in k or "c_fc" in k or "attn.c_proj" in k
                           for k in changed)


def test_model_weights_are_bit_identical_before_folding(tmp_path, small_model_dir, isolated_env,
                                                       monkeypatch):
    cfg = make_cfg()
    model, tok = load_model(str(small_model_dir))
    original = plain_weights(model)
    monkeypatch.setattr(quadapter, "fold_scales", lambda sim, m, scales: None)
    after = plain_weights(quadapter.apply(run_context(cfg, model, tok,
                                                     run_dir=tmp_path, cache_dir=isolated_env)))
    assert after.keys() == original.keys()
    assert all(torch.equal(after[k], original[k]) for k in original)


def test_quadapter_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="adapter=quadapter"):
        check_config(make_cfg("adapter=none"))
    with pytest.raises(ValueError, match=r"ln1_qkv \(ln_1 -> attn.c_attn\), ln2_fc .*, v_proj"):
        check_config(make_cfg("adapter.sites=[ln1_qkv,mlp_out]"))
    assert list(eval_sets(make_cfg())) == ["prose", "code"]


def test_a_resumed_run_skips_its_finished_blockwise_phase_and_ends_where_an_unbroken_one_does(
        tmp_path, small_model_dir, monkeypatch):
    from quadapter.errors import RunInterrupted
    from quadapter.runner import run

    cfg = make_cfg("quantizer=learned", "method.learn_ranges=true",
                   f"paths.cache_dir={small_model_dir.parents[1]}")
    unbroken = run(cfg, tmp_path / "unbroken")
    train = quadapter.train

    def stopped(*args, **kwargs):
        raise RunInterrupted("received SIGTERM at step 0")

    monkeypatch.setattr(quadapter, "train", stopped)  # killed as phase 2 starts
    with pytest.raises(RunInterrupted):
        run(cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoints" / "blockwise" / "done.pt").is_file()
    monkeypatch.setattr(quadapter, "train", train)
    monkeypatch.setattr(quadapter, "reconstruct_blocks",
                        lambda *a, **k: pytest.fail("phase 1 ran again"))
    resumed = run(cfg, tmp_path / "resumed")
    assert resumed["status"] == "completed" and resumed["attempts"][0]["status"] == "interrupted"
    assert resumed["metrics"] == unbroken["metrics"]  # α, ranges and RNG restored exactly
    costs = ("seconds", "peak_memory_mb")  # measured, so they differ between two runs

    def fitted(summary):
        return {**summary, "units": [{k: v for k, v in u.items() if k not in costs} for u in summary["units"]]}
    assert fitted(resumed["quadapter"]["blockwise"]) == fitted(unbroken["quadapter"]["blockwise"])
    assert resumed["training"]["curves"] == unbroken["training"]["curves"]


def test_a_phase_checkpoint_that_does_not_fit_names_the_file_to_delete(tmp_path):
    from quadapter.checkpoints import CheckpointError, load_phase, save_phase

    path = tmp_path / "done.pt"
    save_phase(path, {"a": torch.ones(3)}, {"units": []}, {"torch": torch.get_rng_state()})
    target = {"a": torch.zeros(3)}
    assert load_phase(path, target)[0] == {"units": []} and torch.equal(target["a"], torch.ones(3))
    assert load_phase(tmp_path / "none.pt", target) is None
    with pytest.raises(CheckpointError, match=r"does not fit this run: it holds other parameters \(a\)"):
        load_phase(path, {"a": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"other parameters \(a, b\)"):
        load_phase(path, {"b": torch.zeros(3)})
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=rf"{path} cannot be read .*rm {path}"):
        load_phase(path, target)
