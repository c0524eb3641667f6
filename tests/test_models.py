import json

import pytest
import torch
from conftest import CONF, SHARED_DATA, SMALL_SPEC, needs_shared_data
from omegaconf import OmegaConf

from quadapter.data.corpora import load_text
from quadapter.data.tokens import encode
from quadapter.evaluation import perplexity
from quadapter.methods import embedded_model
from quadapter.models.loading import ModelError, load_model


@needs_shared_data
def test_load_saved_random_gpt2_with_the_real_tokenizer(random_gpt2_dir):
    model, tok = load_model(str(random_gpt2_dir), tokenizer=str(SHARED_DATA / "gpt2-tokenizer"))
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert len(tok) == model.config.vocab_size == 50257


def test_directory_without_weights_is_a_clear_error(tmp_path, random_gpt2_dir):
    (tmp_path / "config.json").write_text((random_gpt2_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="holds no weights"):
        load_model(str(tmp_path))


@needs_shared_data
def test_tokenizer_larger_than_the_model_vocab_is_rejected(small_model_dir):
    with pytest.raises(ModelError, match="do not belong together"):
        load_model(str(small_model_dir), tokenizer=str(SHARED_DATA / "gpt2-tokenizer"))


def test_unreachable_hub_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="hub name"):
        load_model("no-such-org/no-such-model")


def test_embedded_model_is_a_real_lm_on_both_domains(small_model_dir):
    meta = json.loads((small_model_dir / "pretrain.json").read_text())
    assert meta["spec"] == SMALL_SPEC and meta["train_tokens"] == 60 * 8 * 64
    model, tok = load_model(str(small_model_dir))
    assert type(model).__name__ == "GPT2LMHeadModel" and len(tok) == 512
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    for domain in ("prose", "code"):
        spec = OmegaConf.load(CONF / "dataset" / f"{domain}.yaml")
        ids = encode(load_text(spec, "test"), tok)[:4096]
        ppl, _ = perplexity(model, ids, 64, 64)
        before, _ = perplexity(untrained, ids, 64, 64)
        assert ppl < 0.6 * before, f"{domain}: held-out ppl {ppl} vs {before} untrained"


def test_embedded_model_is_cached_and_reused(small_model_dir, isolated_env, monkeypatch):
    monkeypatch.setattr(embedded_model, "_pretrain", lambda *a: pytest.fail("pretrained again"))
    assert embedded_model.ensure_embedded_model(SMALL_SPEC, isolated_env) == small_model_dir
    other = dict(SMALL_SPEC, steps=61)
    assert embedded_model.embedded_model_dir(other, isolated_env) != small_model_dir


def test_interrupted_pretraining_resumes_from_its_checkpoint(tmp_path, monkeypatch, crash_training):
    spec = dict(SMALL_SPEC, steps=12, checkpoint_every=5)
    crash = crash_training
    crash["at"] = 7
    with pytest.raises(RuntimeError, match="simulated crash"):
        embedded_model.ensure_embedded_model(spec, tmp_path)
    partial = embedded_model.embedded_model_dir(spec, tmp_path).with_name(
        embedded_model.embedded_model_dir(spec, tmp_path).name + ".partial")
    ckpt = torch.load(partial / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5

    resumed_from = []
    fit = embedded_model.pl.Trainer.fit
    monkeypatch.setattr(embedded_model.pl.Trainer, "fit",
                        lambda self, *a, **kw: (resumed_from.append(kw.get("ckpt_path")), fit(self, *a, **kw)))
    crash["at"] = -1
    final = embedded_model.ensure_embedded_model(spec, tmp_path)
    assert resumed_from == [str(partial / "checkpoints" / "last.ckpt")]
    assert (final / "pretrain.json").is_file() and not partial.exists()
