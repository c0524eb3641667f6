import numpy as np
import pytest
import torch
from conftest import CONF, SHARED_DATA, needs_shared_data
from omegaconf import OmegaConf

from quadapter.data.corpora import DataError, load_rows, load_text
from quadapter.data.datamodule import LMDataModule, TokenBlocks
from quadapter.data.embedded import SPLITS, embedded_documents, split_of
from quadapter.data.tokens import cached_encode, encode
from quadapter.models.loading import load_tokenizer


def dataset(name: str):
    return OmegaConf.load(CONF / "dataset" / f"{name}.yaml")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    if not (SHARED_DATA / "gpt2-tokenizer" / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer under {SHARED_DATA}")
    return load_tokenizer(str(SHARED_DATA / "gpt2-tokenizer"))


@pytest.mark.parametrize("domain", ["prose", "code"])
def test_embedded_splits_are_disjoint_nonempty_and_deterministic(domain):
    parts = {s: embedded_documents(domain, s) for s in SPLITS}
    assert all(parts[s] for s in SPLITS)
    assert len(parts["train"]) > 8 * len(parts["test"])
    seen = [set(parts[s]) for s in SPLITS]
    assert not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert split_of("module:json/decoder.py") == split_of("module:json/decoder.py")


def test_embedded_domains_differ():
    prose, code = embedded_documents("prose", "test"), embedded_documents("code", "test")

    def density(docs, s):
        return sum(d.count(s) for d in docs) / sum(len(d) for d in docs)

    assert density(code, "self.") > 5 * density(prose, "self.")
    assert density(prose, " the ") > 3 * density(code, " the ")


def test_unknown_domain_and_split_name_the_options():
    with pytest.raises(ValueError, match="prose, code"):
        embedded_documents("poetry", "test")
    with pytest.raises(ValueError, match="train, validation, test"):
        embedded_documents("prose", "dev")


@needs_shared_data
def test_local_wikitext2_matches_hub_row_convention():
    rows = load_rows(dataset("wikitext2"), "test", str(SHARED_DATA))
    assert len(rows) == 4358 and rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    text = load_text(dataset("wikitext2"), "test", str(SHARED_DATA))
    assert text.startswith("\n\n = Robert Boulter = \n\n\n")


@needs_shared_data
def test_local_ptb_and_lambada():
    ptb = load_rows(dataset("ptb"), "test", str(SHARED_DATA))
    assert len(ptb) == 3761 and ptb[0].startswith("no it was n't black monday")
    lam = load_rows(dataset("lambada"), "test", str(SHARED_DATA))
    assert len(lam) == 5153 and lam[0].startswith("In my palm is a clear stone")
    wt103 = load_rows(dataset("wikitext103"), "validation", str(SHARED_DATA))
    assert len(wt103) == 3760


@needs_shared_data
def test_missing_local_split_names_the_file():
    with pytest.raises(DataError, match=r"wiki\.train\.raw"):
        load_text(dataset("wikitext2"), "train", str(SHARED_DATA))
    with pytest.raises(DataError, match="has no 'train' split; it has test"):
        load_text(dataset("lambada"), "train", str(SHARED_DATA))


def test_hub_failure_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="QUADAPTER_DATA_DIR"):
        load_rows(dataset("ptb"), "test", None)


def test_local_source_without_data_dir_says_how_to_fix():
    spec = OmegaConf.merge(dataset("ptb"), {"source": "local"})
    with pytest.raises(DataError, match="QUADAPTER_DATA_DIR"):
        load_rows(spec, "test", None)


def test_unknown_source_is_rejected():
    spec = OmegaConf.merge(dataset("ptb"), {"source": "ftp"})
    with pytest.raises(DataError, match="auto, embedded, local, hub"):
        load_rows(spec, "test", None)


@needs_shared_data
def test_real_gpt2_tokenizer_from_bare_dir(gpt2_tokenizer):
    assert len(gpt2_tokenizer) == 50257 and gpt2_tokenizer.eos_token_id == 50256
    assert encode("Hello world", gpt2_tokenizer).tolist() == [15496, 995]


@needs_shared_data
def test_token_cache_is_keyed_by_text_and_tokenizer(tmp_path, gpt2_tokenizer, small_model_dir):
    small = load_tokenizer(str(small_model_dir))
    text = load_text(dataset("ptb"), "validation", str(SHARED_DATA))[:20000]
    a = cached_encode(text, gpt2_tokenizer, tmp_path)
    assert torch.equal(a, encode(text, gpt2_tokenizer))
    assert torch.equal(cached_encode(text, gpt2_tokenizer, tmp_path), a)  # from the cache
    b = cached_encode(text, small, tmp_path)
    c = cached_encode(text + " more", gpt2_tokenizer, tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 3
    assert not torch.equal(a, b[: len(a)]) and len(c) > len(a)


def test_corrupt_token_cache_entry_is_rebuilt(tmp_path, small_model_dir):
    tok = load_tokenizer(str(small_model_dir))
    ids = cached_encode("def f(x):\n    return x\n", tok, tmp_path)
    (entry,) = (tmp_path / "tokens").glob("*.npy")
    entry.write_bytes(b"garbage")
    assert torch.equal(cached_encode("def f(x):\n    return x\n", tok, tmp_path), ids)
    assert np.load(entry).tolist() == ids.tolist()


def test_blocks_and_balanced_sampling():
    big, small = torch.arange(1000), torch.arange(10_000, 10_040)
    assert len(TokenBlocks(big, 16)) == 62 and TokenBlocks(big, 16)[1].tolist() == list(range(16, 32))
    with pytest.raises(ValueError, match="shorter than one block"):
        TokenBlocks(small, 64)
    dm = LMDataModule([big, small], block_size=8, batch_size=50, num_samples=2000, seed=0)
    batches = torch.cat(list(dm.train_dataloader()))
    from_small = (batches[:, 0] >= 10_000).float().mean().item()
    assert batches.shape == (2000, 8) and 0.45 < from_small < 0.55
    again = torch.cat(list(LMDataModule([big, small], 8, 50, 2000, seed=0).train_dataloader()))
    assert torch.equal(batches, again)
