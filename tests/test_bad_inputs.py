"""Every missing or broken input is a UserError whose message names the problem and the fix.

Data (local mirror, empty or too-short splits), models (paths, weights, configs, tokenizers),
unsafe checkpoints (pickled code, remote code) and resume checkpoints, each with a real file on
disk; a few go through ``quadapter.runner.run`` to show the failure is recorded in results.json.
"""

import json
import os
import shutil
import uuid

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from tokenizers.models import BPE
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from quadapter.checkpoints import CheckpointError, check_checkpoint
from quadapter.data import token_ids
from quadapter.data.corpora import DataError, MissingSplitError, load_rows, load_text
from quadapter.data.datamodule import LMDataModule, TokenBlocks, TooShortError
from quadapter.errors import ConfigError, UserError
from quadapter.models.loading import ModelError, eval_window, load_model
from quadapter.runner import run

PTB_TEXT = "\n".join(f"the market rose {i} points as investors bought shares of <unk> corp" for i in
                     range(60))


def dataset(name: str):
    return OmegaConf.load(CONF / "dataset" / f"{name}.yaml")


def write_mirror(root, **splits):
    """A local mirror holding ptb files: ``train="..."`` writes ptb/ptb.train.txt."""
    names = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "test": "ptb.test.txt"}
    (root / "ptb").mkdir(parents=True, exist_ok=True)
    for split, text in splits.items():
        (root / "ptb" / names[split]).write_text(text)
    return root


def save_model(out, vocab_size=320, n_layer=1, tokenizer=None):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=16, n_head=2, n_positions=32,
                               vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
                    ).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real 300-token byte-level BPE, trained in a fraction of a second."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PTB_TEXT] * 3, vocab_size=300, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    assert len(tok) == 300
    return tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny GPT-2 whose embedding (320 rows) is larger than its tokenizer (300), as GPT-2 pads."""
    return save_model(tmp_path_factory.mktemp("model"), tokenizer=tokenizer)


def copy_model(model_dir, out, skip=()):
    out.mkdir()
    for f in model_dir.iterdir():
        if f.name not in skip:
            shutil.copy(f, out)
    return out


# ---------------------------------------------------------------------------------------- data


def test_data_dir_that_is_a_file_is_called_a_file(tmp_path):
    (tmp_path / "mirror").write_text("not a folder")
    with pytest.raises(DataError, match=r"the data dir .*mirror \(paths.data_dir, by default "
                                        r"\$QUADAPTER_DATA_DIR\) is a file, not a folder"):
        load_text(dataset("ptb"), "test", str(tmp_path / "mirror"))


def test_utf8_error_names_the_files_own_byte_and_line(tmp_path):
    write_mirror(tmp_path)
    good = "".join(f"line {i} of plain text in a large file\n" for i in range(3000)).encode()
    (tmp_path / "ptb" / "ptb.test.txt").write_bytes(good + b"caf\xe9\n")
    with pytest.raises(DataError, match=rf"is not UTF-8 text \(byte {len(good) + 3}, line 3001:"):
        load_rows(dataset("ptb"), "test", str(tmp_path))


def test_missing_data_dir_names_it_the_expected_file_and_the_env_var(tmp_path):
    with pytest.raises(DataError) as err:
        load_text(dataset("ptb"), "test", str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert f"the data dir {tmp_path / 'nowhere'} (paths.data_dir, by default $QUADAPTER_DATA_DIR) " \
           "does not exist" in msg
    assert "ptb/ptb.test.txt" in msg and "QUADAPTER_DATA_DIR" in msg and "paths.data_dir" in msg


def test_missing_split_file_names_the_path_and_what_the_folder_holds(tmp_path):
    write_mirror(tmp_path, train=PTB_TEXT)
    with pytest.raises(MissingSplitError) as err:
        load_text(dataset("ptb"), "test", str(tmp_path))
    msg = str(err.value)
    assert f"missing file {tmp_path / 'ptb' / 'ptb.test.txt'}" in msg
    assert f"{tmp_path / 'ptb'} holds ptb.train.txt" in msg and "QUADAPTER_DATA_DIR" in msg
    with pytest.raises(MissingSplitError, match=r"there is no folder .*wikitext-2-raw"):
        load_text(dataset("wikitext2"), "test", str(tmp_path))


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_empty_or_blank_split_names_dataset_split_and_file(tmp_path, text):
    write_mirror(tmp_path, test=text)
    with pytest.raises(DataError) as err:
        load_text(dataset("ptb"), "test", str(tmp_path))
    msg = str(err.value)
    assert "dataset 'ptb', split 'test' is empty" in msg
    assert str(tmp_path / "ptb" / "ptb.test.txt") in msg and "choose another split" in msg


def test_wikitext_file_of_blank_rows_is_empty(tmp_path):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(" \n \n \n")
    with pytest.raises(DataError, match=r"split 'test' is empty \(3 rows, all blank in file "):
        load_text(dataset("wikitext2"), "test", str(tmp_path))


def test_unreadable_local_files_say_which_line_or_byte(tmp_path):
    write_mirror(tmp_path)
    (tmp_path / "ptb" / "ptb.test.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"ptb\.test\.txt is not UTF-8 text \(byte 3.*re-encode it"):
        load_rows(dataset("ptb"), "test", str(tmp_path))
    (tmp_path / "lambada").mkdir()
    lam = tmp_path / "lambada" / "lambada_test.jsonl"
    lam.write_text('{"text": "a passage"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"lambada_test\.jsonl line 2 is not JSON"):
        load_rows(dataset("lambada"), "test", str(tmp_path))
    lam.write_text('{"text": "a passage"}\n\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"line 3 has no text field 'text'; set dataset.local.text_field"):
        load_rows(dataset("lambada"), "test", str(tmp_path))


def test_embedded_sources_reject_unknown_splits_and_non_embedded_datasets():
    with pytest.raises(MissingSplitError, match="has no 'dev' split; it has train, validation, test"):
        load_rows(dataset("prose"), "dev")
    ptb = OmegaConf.merge(dataset("ptb"), {"source": "embedded"})
    with pytest.raises(DataError, match="not an embedded corpus.*dataset.source=local"):
        load_rows(ptb, "test")


def test_hub_split_that_does_not_exist_is_a_missing_split(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    (tmp_path / "ds").mkdir()  # a dataset repo in a local folder: the hub code path, offline
    (tmp_path / "ds" / "test.jsonl").write_text('{"text": "hello there"}\n{"text": "hi"}\n')
    spec = OmegaConf.merge(dataset("lambada"), {"source": "hub", "hub": {
        "path": str(tmp_path / "ds"), "name": None}})
    assert load_rows(spec, "test") == ["hello there", "hi"]
    with pytest.raises(MissingSplitError, match=r"has no 'validation' split \(Unknown split"):
        load_rows(spec, "validation")
    with pytest.raises(DataError, match=r"has no column 'body' \(it has text\); set dataset.hub.text_field"):
        load_rows(OmegaConf.merge(spec, {"hub": {"text_field": "body"}}), "test")


def test_split_of_one_token_cannot_be_scored(tmp_path, tokenizer):
    write_mirror(tmp_path, test="the\n", validation=PTB_TEXT)
    with pytest.raises(DataError) as err:
        token_ids(dataset("ptb"), "test", tokenizer, str(tmp_path), tmp_path / "cache")
    assert "dataset 'ptb', split 'test'" in str(err.value)
    assert "tokenizes to only 1 token(s); perplexity needs at least 2" in str(err.value)
    assert len(token_ids(dataset("ptb"), "validation", tokenizer, str(tmp_path), tmp_path / "c")) > 2


def test_text_shorter_than_one_block_names_source_and_fix():
    ids = torch.arange(40)
    with pytest.raises(TooShortError) as err:
        TokenBlocks(ids, 64, "dataset 'ptb', split 'train'", "lower eval.context")
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)
    assert str(err.value) == ("dataset 'ptb', split 'train' has 40 tokens, shorter than one block of "
                              "64 tokens: lower eval.context")
    with pytest.raises(TooShortError, match="^code has 40 tokens, shorter than one block of 64"):
        LMDataModule([torch.arange(1000), ids], 64, 4, 8, sources=["prose", "code"])
    assert len(TokenBlocks(ids, 40)) == 1  # exactly one block is enough


# --------------------------------------------------------------------------------------- models


def test_model_paths_that_are_not_model_directories(tmp_path, model_dir):
    with pytest.raises(ModelError, match=rf"model.name_or_path: no such directory {tmp_path}/nope; "
                                         "point model.name_or_path at a directory made by save_pretrained"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match=r"is a file, not a directory; give the directory that holds it"):
        load_model(str(model_dir / "model.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no config.json \(found nothing\)"):
        load_model(str(tmp_path / "empty"))


def test_directory_with_config_only_says_which_weight_files_it_expects(tmp_path, model_dir):
    shutil.copy(model_dir / "config.json", tmp_path)
    with pytest.raises(ModelError) as err:
        load_model(str(tmp_path))
    assert str(err.value) == (
        f"model directory {tmp_path} holds no weights (found config.json): expected model.safetensors "
        "or pytorch_model.bin (or a sharded *.index.json); point model.name_or_path at a directory "
        "made by save_pretrained")


def test_truncated_or_garbage_weights_are_named(tmp_path, model_dir):
    trunc = copy_model(model_dir, tmp_path / "trunc")
    blob = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelError, match=rf"weights file {trunc}/model.safetensors is corrupt or truncated"):
        load_model(str(trunc))
    junk = copy_model(model_dir, tmp_path / "junk", skip=("model.safetensors",))
    (junk / "pytorch_model.bin").write_bytes(b"this is not a checkpoint\n" * 40)
    with pytest.raises(ModelError, match=rf"weights file {junk}/pytorch_model.bin is corrupt or truncated"):
        load_model(str(junk))
    sd = GPT2LMHeadModel.from_pretrained(str(model_dir)).state_dict()
    torch.save(sd, junk / "pytorch_model.bin")
    blob = (junk / "pytorch_model.bin").read_bytes()
    (junk / "pytorch_model.bin").write_bytes(blob[:-100])
    with pytest.raises(ModelError, match=r"pytorch_model.bin is corrupt or truncated"):
        load_model(str(junk))


def test_sharded_index_with_a_missing_shard(tmp_path, model_dir):
    out = copy_model(model_dir, tmp_path / "sharded", skip=("model.safetensors",))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "transformer.wte.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    shutil.copy(model_dir / "model.safetensors", out / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelError, match="names 2 weight shards but .* lacks model-00002-of-00002"):
        load_model(str(out))


def test_weights_that_do_not_fit_the_config_are_refused_not_randomly_filled(tmp_path, model_dir):
    deeper = copy_model(model_dir, tmp_path / "deeper")
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "n_layer": 2}))
    with pytest.raises(ModelError, match=r"the weights lack 12 parameters its config.json describes "
                                         r"\(e.g. transformer.h.1.attn"):
        load_model(str(deeper))
    wider = copy_model(model_dir, tmp_path / "wider")
    (wider / "config.json").write_text(json.dumps({**config, "n_embd": 32}))
    with pytest.raises(ModelError, match="the weights' shapes do not match its config.json"):
        load_model(str(wider))
    (wider / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match=r"config.json is not valid JSON"):
        load_model(str(wider))


def test_pytorch_model_bin_loads_the_same_weights(tmp_path, model_dir):
    out = copy_model(model_dir, tmp_path / "bin", skip=("model.safetensors",))
    reference, _ = load_model(str(model_dir))
    torch.save(reference.state_dict(), out / "pytorch_model.bin")
    model, tok = load_model(str(out))
    theirs = reference.state_dict()
    assert model.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    assert len(tok) == 300


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_pytorch_model_bin_is_refused_and_never_runs(tmp_path, model_dir):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    out = copy_model(model_dir, tmp_path / "evil", skip=("model.safetensors",))
    reference, _ = load_model(str(model_dir))
    torch.save({**reference.state_dict(), "payload": _Payload(marker)}, out / "pytorch_model.bin")
    with pytest.raises(ModelError) as err:
        load_model(str(out))
    assert f"refused to load {out}/pytorch_model.bin: it holds pickled Python objects" in str(err.value)
    assert "GLOBAL posix.system" in str(err.value) or "GLOBAL os.system" in str(err.value)
    assert not marker.exists()
    torch.load(out / "pytorch_model.bin", weights_only=False)  # the payload is real: it runs
    assert marker.exists()


def test_remote_code_runs_only_when_the_config_allows_it(tmp_path, model_dir, tokenizer,
                                                           monkeypatch):
    marker = tmp_path / f"remote_{uuid.uuid4().hex}"
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on stdin whether to run code"))
    out = copy_model(model_dir, tmp_path / "remote")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "evil_lm", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilLM"}}))
    (out / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ModelError, match=r"ships its own Python code .* model.trust_remote_code=true"):
        load_model(str(out))
    tok_dir = tmp_path / "remote_tok"  # a tokenizer alone: no model config.json names its class
    tokenizer.save_pretrained(tok_dir)
    tok_config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    tok_config.pop("tokenizer_class", None)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(
        {**tok_config, "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (tok_dir / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ModelError, match=r"^model.tokenizer: the tokenizer in .* ships its own Python "
                                         r"code .* model.trust_remote_code=true"):
        load_model(str(model_dir), tokenizer=str(tok_dir))
    assert not marker.exists()
    (tok_dir / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    _, tok = load_model(str(model_dir), tokenizer=str(tok_dir), trust_remote_code=True)
    assert type(tok).__name__ == "EvilTokenizer" and marker.exists()  # the flag reaches the tokenizer
    with pytest.raises(ConfigError, match="model.trust_remote_code='yes' must be true or false"):
        load_model(str(model_dir), trust_remote_code="yes")


def test_model_saved_without_its_tokenizer(tmp_path, model_dir):
    out = copy_model(model_dir, tmp_path / "no_tok", skip=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ModelError) as err:
        load_model(str(out))
    assert str(err.value).startswith(f"model.name_or_path (its tokenizer): {out} holds no tokenizer "
                                     "files (found config.json, generation_config.json, model.safetensors)")
    assert "Set model.tokenizer" in str(err.value)
    model, tok = load_model(str(out), tokenizer=str(model_dir))
    assert len(tok) == 300
    (tmp_path / "empty_tok").mkdir()
    Tokenizer(BPE()).save(str(tmp_path / "empty_tok" / "tokenizer.json"))  # a vocabulary of nothing
    with pytest.raises(ModelError, match=r"^model.tokenizer: the tokenizer in .* has 0 token\(s\) and "
                                         "encodes 'The quick brown fox"):
        load_model(str(model_dir), tokenizer=str(tmp_path / "empty_tok"))


def test_tokenizer_larger_than_the_embedding_is_refused_smaller_is_fine(tmp_path, model_dir, tokenizer):
    small = save_model(tmp_path / "small_vocab", vocab_size=280)
    with pytest.raises(ModelError) as err:
        load_model(str(small), tokenizer=str(model_dir))
    assert f"tokenizer {str(model_dir)!r} has 300 tokens but model {str(small)!r} embeds only 280" in str(
        err.value)
    assert "ids >= 280 would index past the embedding" in str(err.value)
    assert "Set model.tokenizer to the model's own tokenizer" in str(err.value)
    model, tok = load_model(str(model_dir))  # 300 tokens, 320 embedding rows: GPT-2-style padding
    ids = tok("the market rose", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == 320


def test_eval_window_beyond_the_models_positions_is_a_config_error(model_dir):
    model, _ = load_model(str(model_dir))
    assert eval_window(model) == (32, 32) and eval_window(model, 16, 8) == (16, 8)
    with pytest.raises(ConfigError, match=r"^eval.context=64 is outside 2..32: the model has 32 "
                                          "positions; lower eval.context, or set it to null"):
        eval_window(model, 64)
    with pytest.raises(ConfigError, match="eval.context=1 is outside"):
        eval_window(model, 1)
    with pytest.raises(ConfigError, match=r"eval.stride=24 is outside 1..16 \(eval.context\)"):
        eval_window(model, 16, 24)
    with pytest.raises(IndexError):  # what the check prevents
        model(torch.zeros(1, 64, dtype=torch.long))


def test_bad_dtype_is_a_config_error(model_dir):
    with pytest.raises(ConfigError, match="model.dtype='float33' is not a torch dtype"):
        load_model(str(model_dir), dtype="float33")


# ---------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory):
    """``last.ckpt`` written by a real three-step Lightning fit of the LM module."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from quadapter.methods.train_module import TrainModule, weight_groups

    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50))
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, accelerator="cpu",
                         enable_model_summary=False, callbacks=[ModelCheckpoint(
                             dirpath=out, save_last=True, every_n_train_steps=2, save_top_k=0)])
    trainer.fit(TrainModule(model, weight_groups(model, 1e-3, 0.0), total_steps=3),
                datamodule=LMDataModule([torch.randint(0, 50, (400,))], 16, 4, 12))
    return out / "last.ckpt"


def test_real_lightning_checkpoint_passes_and_truncated_copies_fail(tmp_path, lightning_checkpoint):
    check_checkpoint(lightning_checkpoint)
    blob = lightning_checkpoint.read_bytes()
    for keep in (len(blob) // 2, len(blob) - 10, 64):
        bad = tmp_path / f"last-{keep}.ckpt"
        bad.write_bytes(blob[:keep])
        with pytest.raises(CheckpointError) as err:
            check_checkpoint(bad)
        assert str(err.value).startswith(f"checkpoint {bad} cannot be resumed from: it is truncated "
                                         "or corrupt")
        assert f"delete it (rm {bad}) and re-run the same command" in str(err.value)


def test_foreign_or_unsafe_checkpoints_are_refused(tmp_path, lightning_checkpoint):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint "
                                              r"\(no global_step, loops, optimizer_states\)"):
        check_checkpoint(plain)
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    ckpt = torch.load(lightning_checkpoint, weights_only=True)
    torch.save({**ckpt, "hyper_parameters": _Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="pickled Python objects that a weights-only load refuses"):
        check_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        check_checkpoint(tmp_path / "absent.ckpt")


# ------------------------------------------------------------------------------ through the runner


def compose_run(model_dir, data_dir, cache_dir, *overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            "model=gpt2", f"model.name_or_path={model_dir}", "model.name=tinytest", "dataset=ptb",
            "eval=in_domain", "logger=csv", f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}",
            "trainer.enable_progress_bar=false", *overrides])


def failed_run(cfg, run_dir, error):
    with pytest.raises(error) as err:
        run(cfg, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["error"] == f"{type(err.value).__name__}: {err.value}"
    return str(err.value)


def test_runs_with_bad_inputs_fail_with_the_message_in_results(tmp_path, model_dir):
    mirror = write_mirror(tmp_path / "data", train=PTB_TEXT)
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cache"), tmp_path / "run1", DataError)
    assert f"missing file {mirror}/ptb/ptb.test.txt" in msg

    write_mirror(mirror, test="the\n")
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cache"), tmp_path / "run2", DataError)
    assert "split 'test'" in msg and "tokenizes to only 1 token(s)" in msg

    msg = failed_run(compose_run(tmp_path / "no_model", mirror, tmp_path / "cache"), tmp_path / "run3",
                     ModelError)
    assert msg.startswith(f"model.name_or_path: no such directory {tmp_path / 'no_model'}")

    write_mirror(mirror, test=PTB_TEXT)
    ok = run(compose_run(model_dir, mirror, tmp_path / "cache"), tmp_path / "run4")
    assert ok["status"] == "completed" and ok["protocol"]["ptb"]["tokens"] > 32


def test_real_qat_checkpoint_passes_the_resume_check(tmp_path, model_dir):
    mirror = write_mirror(tmp_path / "data", train=PTB_TEXT, validation=PTB_TEXT, test=PTB_TEXT)
    cfg = compose_run(model_dir, mirror, tmp_path / "cache", "method=qat", "method.train.steps=2",
                      "method.train.batch_size=2", "trainer.val_check_interval=1",
                      "eval.val_max_tokens=256", "quantizer.calibration.blocks=2")
    assert run(cfg, tmp_path / "run")["status"] == "completed"
    last = tmp_path / "run" / "checkpoints" / "e2e" / "last.ckpt"
    check_checkpoint(last)  # quantizer ranges, curve history and all: a weights-only load takes it
    last.write_bytes(last.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=f"checkpoint {last} cannot be resumed from"):
        check_checkpoint(last)


def test_calibration_data_shorter_than_one_block_is_a_data_error(tmp_path, model_dir):
    mirror = write_mirror(tmp_path / "data", train="the market rose\n", test=PTB_TEXT)
    cfg = compose_run(model_dir, mirror, tmp_path / "cache", "method=ptq")
    msg = failed_run(cfg, tmp_path / "run", UserError)
    assert "shorter than one block of 32 tokens" in msg
def test_window_resume_and_training_data_checks_in_a_run(tmp_path, model_dir):
    mirror = write_mirror(tmp_path / "data", train=PTB_TEXT, validation=PTB_TEXT, test=PTB_TEXT)
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cache", "eval.context=64"),
                     tmp_path / "run0", ConfigError)
    assert msg.startswith("eval.context=64 is outside 2..32")
    qat = ["method=qat", "method.train.steps=2", "method.train.batch_size=2",
           "trainer.val_check_interval=1", "eval.val_max_tokens=256", "quantizer.calibration.blocks=2"]
    last = tmp_path / "run" / "checkpoints" / "e2e" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    cfg = compose_run(model_dir, mirror, tmp_path / "cache", *qat)
    with pytest.raises(CheckpointError) as err:
        run(cfg, tmp_path / "run")
    assert f"delete it (rm {last}) and re-run the same command" in str(err.value)
    # resumable, not failed: the fix the message gives leads to a run that actually runs
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "interrupted"
    last.unlink()
    assert run(cfg, tmp_path / "run")["status"] == "completed"
    write_mirror(mirror, train="the market\n")
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cache", *qat,
                                 "quantizer.calibration.split=validation"), tmp_path / "run2", DataError)
    assert "dataset 'ptb', split 'train' has" in msg and "lower eval.context" in msg


# ------------------------------------------------------------------ checked before heavy work


def test_accelerator_the_installed_torch_lacks_is_a_config_error(tmp_path, model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    mirror = write_mirror(tmp_path / "data", test=PTB_TEXT)
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cache", "trainer.accelerator=gpu"),
                     tmp_path / "run", ConfigError)
    assert msg.startswith("trainer.accelerator=gpu but no CUDA GPU is usable here") and \
        "use trainer.accelerator=auto or cpu" in msg


def test_cache_dir_that_is_a_file_is_a_config_error(tmp_path, model_dir):
    mirror = write_mirror(tmp_path / "data", test=PTB_TEXT)
    (tmp_path / "cachefile").write_text("")
    msg = failed_run(compose_run(model_dir, mirror, tmp_path / "cachefile" / "sub"), tmp_path / "run",
                     ConfigError)
    assert msg == (f"paths.cache_dir={tmp_path / 'cachefile' / 'sub'} cannot be a folder: "
                   f"{tmp_path / 'cachefile'} is a file; point paths.cache_dir at a folder (or remove "
                   "the file)")


def test_wandb_online_without_a_key_fails_before_the_run_computes(tmp_path, model_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc either
    mirror = write_mirror(tmp_path / "data", test=PTB_TEXT)
    cfg = compose_run(model_dir, mirror, tmp_path / "cache", "logger=wandb", "logger.wandb.mode=online")
    msg = failed_run(cfg, tmp_path / "run", UserError)
    assert msg.startswith("W&B is online (logger.wandb.mode or WANDB_MODE) but has no API key: run "
                          "`wandb login`") and "logger.wandb.mode=offline" in msg
    assert json.loads((tmp_path / "run" / "results.json").read_text())["metrics"] == {}


def test_a_logger_that_fails_to_close_does_not_fail_the_run(caplog):
    from pytorch_lightning.loggers import CSVLogger

    from quadapter.tracking import close_loggers

    class Broken(CSVLogger):
        def finalize(self, status):
            raise ConnectionError("server went away")

    close_loggers([Broken("/nonexistent")], {"status": "completed"})
    assert "Broken could not close (ConnectionError: server went away)" in caplog.text


# ------------------------------------------------------------------ one process per run dir


def test_a_busy_run_dir_is_refused_untouched_and_a_dead_owners_taken_over(tmp_path, model_dir):
    import signal
    import subprocess
    import sys

    from quadapter.resume import RunDirBusy, owned

    mirror = write_mirror(tmp_path / "data", test=PTB_TEXT)
    cfg = compose_run(model_dir, mirror, tmp_path / "cache")
    run_dir = tmp_path / "run"
    assert run(cfg, run_dir)["status"] == "completed"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    owner = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                              "from quadapter.resume import owned\n"
                              "with owned(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
                              str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"{run_dir} is in use by process {owner.pid} on .*; "
                                             "its run was not touched"):
            run(cfg, run_dir)
        after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert {p: b for p, b in after.items() if p.name != ".quadapter.owner"} == {
            p: b for p, b in before.items() if p.name != ".quadapter.owner"}
    finally:
        owner.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        owner.wait()
    with owned(run_dir):  # taken over
        pass
    assert run(cfg, run_dir)["status"] == "completed"
