"""Kronecker-factored linears (KnGPT2): the nearest-Kronecker-product initialization is exact for a
sum of Kronecker products and optimal otherwise (checked against numpy's SVD of the rearranged
matrix), and the reshape-and-matmul forward equals the materialized product (nn.Linear and Conv1D)."""

import numpy as np
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from quadapter.models.kronecker import (KroneckerEmbedding, KroneckerLinear, TiedKroneckerHead, kron_sum,
                                        nearest_kronecker, rearrange)


@pytest.mark.parametrize("rank", [1, 3])
def test_a_sum_of_kronecker_products_is_factored_exactly(rank):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(rank, 4, 6, generator=g, dtype=torch.float64), torch.randn(rank, 5, 3, generator=g, dtype=torch.float64)
    weight = kron_sum(a, b)
    fa, fb = nearest_kronecker(weight, (4, 6), (5, 3), rank)
    torch.testing.assert_close(kron_sum(fa, fb), weight, rtol=0, atol=1e-10)


def test_otherwise_it_is_the_best_rank_r_approximation():
    torch.manual_seed(0)
    weight = torch.randn(12, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for rank in (1, 2):
        fa, fb = nearest_kronecker(weight, (3, 4), (4, 5), rank)
        error = float(torch.linalg.norm(weight - kron_sum(fa, fb)))
        s = np.linalg.svd(rearrange(weight, (3, 4), (4, 5)).numpy(), compute_uv=False)
        assert error == pytest.approx(float(np.sqrt((s[rank:] ** 2).sum())), rel=1e-9)  # Eckart–Young
        for _ in range(20):  # and no perturbation of the factors does better
            pa, pb = fa + 1e-3 * torch.randn_like(fa), fb + 1e-3 * torch.randn_like(fb)
            assert float(torch.linalg.norm(weight - kron_sum(pa, pb))) >= error


def test_forward_equals_the_materialized_product_for_linear_and_conv1d_layouts():
    torch.manual_seed(2)
    linear = torch.nn.Linear(24, 12)
    k = KroneckerLinear.from_weight(linear.weight, linear.bias, (3, 4), (4, 6), rank=2)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(k(x), x @ k.weight().T + linear.bias, rtol=1e-5, atol=1e-5)
    conv = Conv1D(12, 24)  # HF GPT-2 layout: weight [in, out]
    torch.nn.init.normal_(conv.weight)
    kc = KroneckerLinear.from_weight(conv.weight.T, conv.bias, (3, 4), (4, 6), rank=1)
    torch.testing.assert_close(kc(x), x @ kc.weight().T + conv.bias, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in k.parameters()) == 2 * (3 * 4 + 4 * 6) + 12
    k(x).sum().backward()
    assert k.left.weight.grad is not None and k.right.weight.grad is not None


def test_a_factored_embedding_looks_up_the_rows_of_the_table_and_a_tied_head_multiplies_by_it():
    torch.manual_seed(3)
    table = torch.randn(12, 6, dtype=torch.float64)
    kron = KroneckerLinear.from_weight(table, None, (4, 2), (3, 3), rank=2)
    embedding = KroneckerEmbedding(kron)
    ids = torch.randint(0, 12, (2, 5))
    torch.testing.assert_close(embedding(ids), kron.weight()[ids])
    assert (embedding.num_embeddings, embedding.embedding_dim) == (12, 6)
    h = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(TiedKroneckerHead(embedding)(h), h @ kron.weight().T)


def test_shapes_that_do_not_fit_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="choose factor shapes whose products"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 4))
    with pytest.raises(ValueError, match="rank 13 must be in 1..12"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 5), rank=13)


# ---- the model transform (through the architecture adapter), saving and loading -------------------

def test_factors_are_chosen_for_a_target_compression():
    from quadapter.models.decompose import choose_factors

    (m1, n1), (m2, n2) = choose_factors(3072, 768, compression=8)
    assert m1 * m2 == 3072 and n1 * n2 == 768 and (m1 * n1 + m2 * n2) <= 3072 * 768 / 8
    assert (m1 * n1 + m2 * n2) > 3072 * 768 / 16  # the least compression reaching the target, not any
    with pytest.raises(ValueError, match="lower the compression or the rank"):
        choose_factors(6, 4, compression=1000)


def random_model(arch, vocab):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=48, n_head=4, vocab_size=vocab, n_positions=32)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=32)).eval()


@pytest.mark.parametrize("embedding", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_decomposed_model_saves_loads_and_gives_the_same_outputs(arch, embedding, tmp_path, small_model_dir):
    from quadapter.models.decompose import kronecker_decompose, save_decomposed
    from quadapter.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(small_model_dir))
    model = random_model(arch, len(tokenizer))
    ids = torch.randint(0, len(tokenizer), (2, 16))
    with torch.no_grad():
        dense = model(ids).logits
    record = kronecker_decompose(model, None, compression=4, rank=2, embedding=embedding)
    n_layers = 2 * (4 if arch == "gpt2" else 7)
    assert len(record["spec"]["layers"]) == n_layers
    if embedding:  # GPT-2's head is tied: it reads the embedding's factors (one copy, in the embedding)
        tied = arch == "gpt2"  # the random Llama's head is its own (tie_word_embeddings false): it stays dense
        assert record["spec"]["embedding"]["tied"] == tied
        assert isinstance(model.get_input_embeddings(), KroneckerEmbedding)
        assert isinstance(model.get_output_embeddings(), TiedKroneckerHead) == tied
        if tied:
            assert not list(model.get_output_embeddings().parameters())
    assert record["params_after"] < record["params_before"]
    assert sum(isinstance(m, KroneckerLinear) for m in model.modules()) == n_layers + embedding
    with torch.no_grad():
        factored = model(ids).logits
    assert not torch.allclose(factored, dense)  # a random weight is no Kronecker product: it changed
    out = save_decomposed(model, tokenizer, record["spec"], tmp_path / "kn")
    loaded, _ = load_model(str(out), arch=arch)
    assert sum(isinstance(m, KroneckerLinear) for m in loaded.modules()) == n_layers + embedding
    assert isinstance(loaded.get_input_embeddings(), KroneckerEmbedding) == embedding
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, factored, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_layer_dropped_student_is_the_teacher_s_kept_blocks_and_reloads(arch, tmp_path, small_model_dir):
    from quadapter.models.layer_drop import every_other, keep_blocks
    from quadapter.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(small_model_dir))
    teacher = random_model(arch, len(tokenizer))
    model = random_model(arch, len(tokenizer))
    ids = torch.randint(0, len(tokenizer), (2, 12))
    record = keep_blocks(model, every_other(2))
    assert record["kept_blocks"] == [0] and model.config.num_hidden_layers == 1
    assert record["params_after"] < record["params_before"]
    with torch.no_grad():  # = the teacher's embeddings, block 0 and head, nothing else
        out = model(ids, output_hidden_states=True)
        ref = teacher(ids, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[0], ref.hidden_states[0])
    final_norm = teacher.base_model.ln_f if arch == "gpt2" else teacher.base_model.norm
    with torch.no_grad():  # the student's last state: the final norm of the teacher's block 0 output
        torch.testing.assert_close(out.hidden_states[1], final_norm(ref.hidden_states[1]), rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    loaded, _ = load_model(str(tmp_path / "student"), arch=arch)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, out.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="distinct increasing indices in 0..1"):
        keep_blocks(random_model(arch, len(tokenizer)), [1, 0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_factored_layer_quantizes_as_its_two_factor_linears(arch):
    """W8A8 on a decomposed model: each factored layer is two sites (``right`` at the input, ``left`` at
    the intermediate), whose fake-quantized forward is the factored forward of the quantized factors on the
    quantized inputs; removal restores the model exactly; scale regions refuse a factored layer."""
    from quadapter.models.arch import for_model
    from quadapter.models.decompose import kronecker_decompose
    from quadapter.models.regions import block_regions
    from quadapter.models.sites import quant_sites
    from quadapter.quant.sim import QuantizerConfig, QuantSim

    model = random_model(arch, 100)
    kronecker_decompose(model, None, compression=4, rank=2)
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        dense = model(ids).logits
    layers, _ = quant_sites(model, None)
    factored = [m for m in model.modules() if isinstance(m, KroneckerLinear)]
    assert len(layers) == 2 * len(factored) and [s.name.rsplit(".", 1)[1] for s in layers[:2]] == ["right", "left"]
    sim = QuantSim(model, layers, (), QuantizerConfig(8, granularity="per_channel"), QuantizerConfig(8))
    sim.calibrate([ids], progress=False)
    k = factored[0]
    x = torch.randn(3, k.in_features)
    with torch.no_grad():
        got = k(x)
        n2 = k.b_shape[1]
        n1 = k.in_features // n2
        right, left = k.right, k.left  # QuantizedLayers now
        z = right.input_quantizer(x.reshape(3, n1, n2)) @ right.weight_quantizer(right.layer.weight).T
        z = z.reshape(3, n1, k.rank, k.b_shape[0]).permute(0, 3, 2, 1).reshape(3, k.b_shape[0], k.rank * n1)
        y = left.input_quantizer(z) @ left.weight_quantizer(left.layer.weight).T
        ref = y.transpose(-1, -2).reshape(3, k.out_features) + (0 if k.bias is None else k.bias)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        quantized = model(ids).logits
    assert 0 < float((quantized - dense).abs().max()) < 0.1 * float(dense.abs().max())
    sim.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense, rtol=0, atol=0)
    region = next(iter(for_model(model).regions))
    with pytest.raises(ValueError, match="Kronecker-factored: a channel scale folds only into a dense linear"):
        block_regions(model, [region])
