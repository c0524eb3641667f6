"""task=glue end to end on a shrunk random BERT and the real GLUE MRPC files: fine-tuning, PTQ after
fine-tuning, QAT, the curves, the report beside LM runs, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF, SHARED_DATA, glue_cfg, glue_cfg_overrides, needs_shared_data
from hydra import compose, initialize_config_dir

from quadapter.data.glue import load_split, read_split, task
from quadapter.errors import ConfigError, UserError
from quadapter.methods import check_config
from quadapter.report import build_report, load_runs
from quadapter.report.formats import markdown
from quadapter.runner import format_results, run
from quadapter.tasks.glue import GlueDataModule, cached_encode

pytestmark = needs_shared_data


@pytest.fixture(scope="module")
def fp_run(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("glue-fp") / "run"
    return out, run(glue_cfg(tiny_bert_dir), out)


def test_fp_fine_tunes_the_new_head_and_scores_dev_with_every_metric(fp_run):
    out, res = fp_run
    assert res["status"] == "completed" and res["task"] == "glue"
    assert res["primary_metric"] == "accuracy"
    assert set(res["metrics"]) == {"test/glue_mrpc/accuracy", "test/glue_mrpc/f1"}
    assert all(0 <= v <= 100 for v in res["metrics"].values())
    proto = res["protocol"]["glue_mrpc"]
    assert (proto["split"], proto["examples"], proto["max_length"]) == ("dev", 408, 64)
    assert proto["truncated"] > 0  # character-level ids: most pairs exceed 64 tokens
    training = res["training"]
    assert training["phase"] == "finetune" and training["train_examples"] == 3668
    assert [p["step"] for p in training["curves"]] == [0, 2, 4]
    assert {"val/glue_mrpc/accuracy", "val/glue_mrpc/f1", "train/accuracy", "train/f1"} <= set(
        training["curves"][1])
    assert "train/loss_mean" in training["curves"][1]
    assert training["curve_splits"] == {"glue_mrpc": "dev", "train": "train subset (16)"}
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/glue_mrpc/accuracy", "train/accuracy", "test/glue_mrpc/f1"} <= set(header)
    text = format_results(res)
    assert "accuracy" in text and "f1" in text and "dev, 408 examples" in text


def test_ptq_quantizes_the_fine_tuned_model_and_qat_the_pretrained_one(tiny_bert_dir, tmp_path):
    ptq = run(glue_cfg(tiny_bert_dir, "method=ptq", "bits=w4a8", "quantizer.calibration.blocks=24"),
              tmp_path / "ptq")
    assert ptq["status"] == "completed" and ptq["bits"] == "w4a8"
    assert ptq["training"]["phase"] == "finetune"  # FP fine-tuning first, then PTQ
    calibration = ptq["quantization"]["calibration"]
    assert (calibration["split"], calibration["examples"]) == ("train", 24)
    assert "bert.encoder.layer.0.attention.self.query" in ptq["quantization"]["quantized_layers"]
    qat = run(glue_cfg(tiny_bert_dir, "method=qat", "method.train.steps=2",
                      "method.train.batch_size=4", "method.train.warmup_steps=0"), tmp_path / "qat")
    assert qat["status"] == "completed" and qat["training"]["phase"] == "e2e"
    assert [p["step"] for p in qat["training"]["curves"]] == [0, 2]


def test_report_renders_glue_and_lm_runs_in_tables_of_their_own(fp_run, tmp_path):
    out, res = fp_run
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "results.json").write_text(json.dumps({
        "status": "completed", "run_name": "fp-fp-tiny-prose", "method": "fp", "bits": "fp",
        "model": "tiny", "dataset": "prose", "adapter": "none", "quantizer": "none", "eval": "embedded",
        "seed": 0, "task": "lm", "metrics": {"test/prose/ppl": 12.5},
        "protocol": {"prose": {"dataset": "prose", "split": "test", "context": 128, "stride": 128}}}))
    report = build_report(load_runs([out, lm]))
    tables = {t.split[0][1]: t for t in report.tables}
    assert set(tables) == {"glue (higher is better)", "lm (lower is better)"}
    glue_table = tables["glue (higher is better)"]
    assert [c.split(" [")[0] for c in glue_table.columns] == ["glue_mrpc accuracy (ID)", "glue_mrpc f1 (ID)"]
    assert glue_table.rows[0].cells[0].mean == pytest.approx(res["metrics"]["test/glue_mrpc/accuracy"])
    assert [c.split(" [")[0] for c in tables["lm (lower is better)"].columns] == ["prose (ID)"]
    assert "task: glue" in markdown(report)


def test_cached_encoding_equals_a_fresh_one_and_max_length_truncates(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    rows = read_split(task("rte"), SHARED_DATA / "glue", "dev")
    first = cached_encode(rows, tok, 32, tmp_path)
    again = cached_encode(rows, tok, 32, tmp_path)  # from the cache file
    assert len(list((tmp_path / "tokens").iterdir())) == 1
    assert again.features == first.features and torch.equal(again.labels, first.labels)
    assert again.truncated == first.truncated > 0
    assert max(len(f["input_ids"]) for f in first.features) == 32


def test_training_order_is_seeded_epochs_and_resumes_mid_epoch(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    data = cached_encode(read_split(task("rte"), SHARED_DATA / "glue", "dev"), tok, 16,
                         tiny_bert_dir / "cache")
    n = len(data)
    module = GlueDataModule(data, tok, batch_size=50, num_samples=2 * n + 10, seed=3)
    order = list(module.train_dataloader().sampler)
    assert len(order) == 2 * n + 10
    assert sorted(order[:n]) == sorted(order[n:2 * n]) == list(range(n))  # every example once an epoch
    assert order[:n] != order[n:2 * n]  # in a fresh order
    assert order == list(GlueDataModule(data, tok, 50, 2 * n + 10, seed=3).train_dataloader().sampler)
    batches = list(module.train_dataloader())
    assert torch.equal(batches[0][1], data.labels[order[:50]])
    assert batches[0][0]["input_ids"].shape[1] == max(len(data.features[i]["input_ids"]) for i in order[:50])
    resumed = module.train_dataloader()
    resumed.load_state_dict({"batches": 3})
    first = next(iter(resumed))
    assert torch.equal(first[1], batches[3][1]) and torch.equal(first[0]["input_ids"], batches[3][0]["input_ids"])


def test_hub_split_equals_the_mirror(monkeypatch):
    """The hub path (nyu-mll/glue, here a stand-in dataset built from the mirror's rows) gives the
    same rows: column names and the validation split name mapped."""
    import datasets

    local = read_split(task("mrpc"), SHARED_DATA / "glue", "dev")
    calls = []

    def fake_load(path, name, split, revision=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence1": list(local.texts[0]),
                                           "sentence2": list(local.texts[1]),
                                           "label": list(local.labels), "idx": list(range(len(local)))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = {"name": "glue_mrpc", "task": "mrpc", "source": "hub",
            "hub": {"path": "nyu-mll/glue", "name": "mrpc", "revision": None}, "local": {"dir": "glue"}}
    hub = load_split(spec, "dev", None)
    assert calls == [("nyu-mll/glue", "mrpc", "validation")]
    assert (hub.texts, hub.labels) == (local.texts, local.labels)


@pytest.mark.parametrize("overrides, message", [
    (["method=quadapter"], "method=quadapter needs task=lm"),
    (["adapter=smoothquant", "method=ptq"], "adapter=smoothquant is not available with task=glue"),
    (["model=smollm2-135m"], "model.arch='llama' is invalid: expected a family with a sequence_classification"),
    (["method=qat", "method.train.train_tokens=100"], "method.train.train_tokens=100 limits an LM"),
    (["method=ptq", "quantizer.calibration.split=dev"], "quantizer.calibration.split='dev' is invalid"),
    (["dataset=glue_nope"], "glue_nope"),
])
def test_bad_glue_configs_are_refused_before_loading(tiny_bert_dir, overrides, message):
    with pytest.raises(Exception, match=message):
        check_config(glue_cfg(tiny_bert_dir, *overrides))


def test_task_and_dataset_that_disagree_and_a_long_max_length_are_one_line_errors(tiny_bert_dir,
                                                                                    tmp_path):
    for overrides, message in ((["dataset=glue_mrpc"], "dataset=glue_mrpc is a GLUE task's dataset: "
                                                       "run it with task=glue"),
                               (["task=glue", "dataset=prose"], "dataset=prose is a language-modelling "
                                                                "corpus: task=glue needs a GLUE dataset")):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        with pytest.raises(ConfigError, match=message) as err:
            check_config(cfg)
        assert len(str(err.value).strip().splitlines()) == 1
    with pytest.raises(UserError, match=r"task.max_length=128 is above the 96 positions"):
        run(glue_cfg(tiny_bert_dir, "task.max_length=128"), tmp_path / "long")


@pytest.mark.parametrize("criterion", ["activation", "weight_norm", "random"])
def test_prequant_trains_only_outlier_columns_and_the_head(tiny_bert_dir, tmp_path, criterion):
    res = run(glue_cfg(tiny_bert_dir, "method=prequant", f"method.criterion={criterion}",
                       "method.train.steps=2", "method.train.batch_size=4", "method.train.warmup_steps=0",
                       "method.trainable_fraction=0.05", "quantizer.calibration.blocks=4"),
              tmp_path / "run")
    assert res["status"] == "completed" and res["bits"] == "w4"
    pq = res["prequant"]
    assert pq["criterion"] == criterion and pq["outlier_text"]["dataset"] == "prose"
    assert res["quantization"]["calibration"]["dataset"] == "prose"  # never task data
    # 5% of 32 or 48 input channels: 2 columns of every 32-wide matrix, 2 of the 48-wide output.dense
    assert {len(c) for c in pq["columns"].values()} == {2}
    columns = pq["trainable_params"] - pq["head_params"]  # FP columns count as 32-bit
    assert pq["effective_weight_bits"] == pytest.approx(4 + 28 * columns / pq["quantized_weights"])
    assert pq["head_params"] == (32 * 32 + 32) + (32 * 2 + 2)  # the pooler and the new classifier
    assert 0 < pq["trainable_share"] < 0.2


def test_lora_trains_peft_adapters_beside_frozen_quantized_weights(tiny_bert_dir, tmp_path):
    res = run(glue_cfg(tiny_bert_dir, "method=lora", "method.rank=2", "method.train.steps=2",
                       "method.train.batch_size=4", "method.train.warmup_steps=0"), tmp_path / "run")
    assert res["status"] == "completed" and res["bits"] == "w4"
    lora = res["lora"]
    assert lora["adapted_layers"] == 12  # 6 linears x 2 blocks
    # rank 2 on [32 -> 32] x4 and [32 -> 48], [48 -> 32] per block, plus the head: pooler, classifier
    per_block = 4 * 2 * (32 + 32) + 2 * (32 + 48) + 2 * (48 + 32)
    assert lora["trainable_params"] == 2 * per_block + lora["head_params"]
    assert lora["head_params"] == (32 * 32 + 32) + (32 * 2 + 2)
    assert [p["step"] for p in res["training"]["curves"]] == [0, 2]


def test_lora_refuses_activation_quantization(tiny_bert_dir):
    with pytest.raises(ConfigError, match="method=lora quantizes weights only"):
        check_config(glue_cfg(tiny_bert_dir, "method=lora", "bits=w4a8"))


def test_weights_quantized_in_place_equal_quantsim_bit_for_bit(tiny_bert_dir):
    """LoRA's base: the plain model with its weights set to QuantSim's fake-quantized ones computes
    exactly what the QuantSim-wrapped model does (LoRA's B starts at 0, so training starts there)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from quadapter.methods.lora import quantize_weights_in_place
    from quadapter.methods.quant_config import quant_settings
    from quadapter.models.sites import quant_sites
    from quadapter.quant.sim import QuantSim

    settings = quant_settings(glue_cfg(tiny_bert_dir, "method=lora", "bits=w3"), "lora")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    baked = copy.deepcopy(model)
    names, _ = quantize_weights_in_place(baked, settings)
    sim = QuantSim(model, *quant_sites(model, settings.sites), weight=settings.weight, act=None)
    sim.calibrate([], progress=False)
    ids = torch.randint(5, 100, (3, 17))
    with torch.no_grad():
        assert torch.equal(baked(input_ids=ids).logits, model(input_ids=ids).logits)
    assert len(names) == 12 and all(type(m) is torch.nn.Linear for n, m in baked.named_modules()
                                    if n in names)


@pytest.mark.slow
def test_a_glue_sweep_runs_its_own_axes_and_reports_glue_tables(tiny_bert_dir, tmp_path):
    """A real multirun: `quadapter -m task=glue compare=fp dataset=glue_mrpc,glue_rte` runs exactly
    those two (not the LM comparison's five methods at w8a3) and its report shows each GLUE metric."""
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    overrides = [o for o in glue_cfg_overrides(tiny_bert_dir) if not o.startswith("logger")]
    proc = subprocess.run([sys.executable, "-m", "quadapter.cli", "-m", *overrides, "compare=fp",
                           "dataset=glue_mrpc,glue_rte", "task.finetune.steps=2", "logger=csv",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert runs == ["0_fp-tiny-bert-glue_mrpc", "1_fp-tiny-bert-glue_rte"]
    table = (sweep / "comparison.md").read_text()
    assert "glue_mrpc accuracy" in table and "glue_mrpc f1" in table and "glue_rte accuracy" in table
