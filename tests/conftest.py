"""Shared fixtures: an isolated cache, offline W&B, and a small embedded model pretrained once."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("QUADAPTER_TEST_DATA", REPO.parent / "shared" / "data"))
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "SOURCES.md").is_file(),
    reason=f"offline data mirror not found at {SHARED_DATA} (set QUADAPTER_TEST_DATA)")

# A pretraining spec small enough to train in seconds; same keys as conf/model/tiny.yaml.
SMALL_SPEC = dict(domains=["prose", "code"], vocab_size=512, n_layer=2, n_embd=64, n_head=2,
                  block_size=64, batch_size=8, steps=60, lr=3e-3, warmup_steps=10, weight_decay=0.1,
                  seed=0, tokenizer_chars=300_000)
SMALL_OVERRIDES = [f"model.pretrain.{k}={v}" for k, v in SMALL_SPEC.items() if k != "domains"]

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test reads and writes caches under one session temp dir, W&B strictly offline."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["QUADAPTER_CACHE_DIR"] = str(cache)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.pop("QUADAPTER_DATA_DIR", None)
    return cache


@pytest.fixture(scope="session")
def small_model_dir(isolated_env: Path) -> Path:
    from quadapter.methods.embedded_model import ensure_embedded_model

    return ensure_embedded_model(SMALL_SPEC, isolated_env)


@pytest.fixture(scope="session")
def random_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT2LMHeadModel with random weights and the real GPT-2 vocabulary size, saved locally."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random-gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128)).save_pretrained(out)
    return out


@pytest.fixture()
def crash_training(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Make every LM training step raise at global step ``crash["at"]`` (-1: never)."""
    from quadapter.methods.train_module import TrainModule

    crash = {"at": -1}
    original = TrainModule.training_step

    def flaky_step(self, batch, batch_idx):
        if self.global_step == crash["at"]:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainModule, "training_step", flaky_step)
    return crash


def refusal(*overrides: str) -> str:
    """The one-line ``ConfigError`` that ``check_config`` raises for the config these overrides
    compose (fails the test if it passes or if the message spans lines)."""
    from hydra import compose, initialize_config_dir

    from quadapter.errors import ConfigError
    from quadapter.methods import check_config

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def run_context(cfg, model, tokenizer, run_dir, cache_dir, **kwargs):
    """A method's RunContext as the runner builds it, with the config's task (which reads its data)."""
    from quadapter.methods import RunContext
    from quadapter.tasks import task_class

    task = task_class(cfg)(cfg, model, tokenizer, cfg.paths.data_dir, cache_dir)
    return RunContext(cfg=cfg, model=model, tokenizer=tokenizer, run_dir=run_dir, cache_dir=cache_dir,
                      task=task, **kwargs)


@pytest.fixture()
def step_hook(monkeypatch):
    """Pass every training loss through ``hook["fn"](module, loss)`` before the step checks it."""
    from quadapter.methods.train_module import TrainModule

    hook = {"fn": lambda module, loss: loss}
    original = TrainModule.forward

    def hooked(self, ids):
        return hook["fn"](self, original(self, ids))

    monkeypatch.setattr(TrainModule, "forward", hooked)
    return hook


def sigterm_once_at(step):
    """A step hook that sends this process SIGTERM once, in the batch of global step ``step``."""
    fired = []

    def hook(module, loss):
        if module.global_step == step and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss
    return hook


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A pretrained-encoder stand-in: a random 2-layer BertModel (with pooler, no classifier) and a
    character-level WordPiece tokenizer, saved like all-MiniLM-L6-v2's directory."""
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(out, do_lower_case=True).save_pretrained(out)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=96)).save_pretrained(out)
    return out


def glue_cfg_overrides(model_dir) -> list[str]:
    return ["task=glue", f"model.name_or_path={model_dir}", "model.package=null", "model.name=tiny-bert",
            f"paths.data_dir={SHARED_DATA}", "task.max_length=64", "task.finetune.steps=4",
            "task.finetune.batch_size=8", "trainer.val_check_interval=2", "eval.val_max_examples=48",
            "eval.train_eval_examples=16", "logger=csv", "trainer.enable_progress_bar=false"]


def glue_cfg(model_dir, *overrides):
    """A task=glue config on the shrunk BERT and the mirror's MRPC, a few steps of everything."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*glue_cfg_overrides(model_dir), *overrides])
