"""GLUE: the mirror's files read as Hugging Face reads them, bad files refused with one line, and our
metrics equal independent implementations (scikit-learn, scipy) on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from scipy import stats
from sklearn import metrics as skm

from quadapter.data.corpora import DataError, MissingSplitError
from quadapter.data.glue import TASKS, read_split, split_path, task
from quadapter.errors import ConfigError
from quadapter.tasks import glue

# rows per split in GLUE (HF `nyu-mll/glue` train / validation sizes); QNLI's train is not mirrored
SIZES = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
         "qnli": (None, 5463), "rte": (2490, 277)}


@needs_shared_data
@pytest.mark.parametrize("name", list(TASKS))
def test_every_mirrored_split_reads_with_glue_sizes_and_labels(name):
    spec = task(name)
    for split, size in zip(("train", "dev"), SIZES[name]):
        if size is None:
            assert not split_path(spec, SHARED_DATA, split).exists()
            continue
        data = read_split(spec, SHARED_DATA, split)
        assert len(data) == size and len(data.texts) == len(spec.text)
        assert all(len(column) == size for column in data.texts)
        if spec.is_regression:
            assert 0.0 <= min(data.labels) and max(data.labels) <= 5.0
        else:
            assert set(data.labels) == set(range(spec.num_labels))


@needs_shared_data
def test_rows_are_read_verbatim_quotes_included():
    mrpc = read_split(task("mrpc"), SHARED_DATA, "dev")
    assert mrpc.texts[0][0] == "He said the foodservice pie business doesn't fit the company's long-term growth strategy."
    assert mrpc.texts[1][0].startswith('"The foodservice pie business does not fit')  # QUOTE_NONE, as HF
    assert mrpc.labels[0] == 1
    rte = read_split(task("rte"), SHARED_DATA, "dev")
    assert rte.labels[0] == 1  # not_entailment is class 1, as in HF's ClassLabel
    cola = read_split(task("cola"), SHARED_DATA, "dev")
    assert cola.texts[0][0] == "The sailors rode the breeze clear of the rocks." and cola.labels[0] == 1


def _write(tmp_path, folder, text):
    (tmp_path / "glue" / folder).mkdir(parents=True)
    (tmp_path / "glue" / folder / "dev.tsv").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("name,folder,text,message", [
    ("rte", "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n",
     r"line 2 has label 'contradiction'; GLUE RTE's labels are entailment, not_entailment"),
    ("rte", "RTE", "idx\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
     r"line 1 is 'idx\\tsentence1\\tsentence2\\tlabel', not GLUE RTE's header"),
    ("sst2", "SST-2", "sentence\tlabel\ngood\t1\nbad\n", r"line 3 has 1 tab-separated fields, GLUE SST-2 has 2"),
    ("stsb", "STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\ty\to\ts\ts\ta\tb\t7.5\n", r"line 2 has score '7.5'; GLUE STS-B scores are numbers in \[0, 5\]"),
    ("cola", "CoLA", "gj04\t2\t\tA sentence.\n", r"line 1 has label '2'; GLUE CoLA's labels are 0, 1"),
    ("mrpc", "MRPC", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n", r"no examples"),
])
def test_a_bad_file_is_one_line_naming_file_line_and_problem(tmp_path, name, folder, text, message):
    _write(tmp_path, folder, text)
    with pytest.raises(DataError, match=message) as info:
        read_split(task(name), tmp_path, "dev")
    assert str(tmp_path / "glue" / folder / "dev.tsv") in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_unknown_task_and_hidden_test_split(tmp_path):
    with pytest.raises(MissingSplitError, match=r"MRPC/train.tsv: point paths.data_dir"):
        read_split(task("mrpc"), tmp_path, "train")
    with pytest.raises(ConfigError, match="unknown GLUE task 'mnli'.*cola, sst2, mrpc, stsb, qnli, rte"):
        task("mnli")
    with pytest.raises(ConfigError, match="test labels are hidden"):
        read_split(task("mrpc"), tmp_path, "test")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_scikit_learn(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (300,), generator=gen)
    preds = torch.where(torch.rand(300, generator=gen) < 0.7, labels, 1 - labels)  # 70% right
    for name in ("mrpc", "cola", "rte"):
        spec = task(name)
        collection = glue.metrics(spec)
        for i in range(0, 300, 64):  # accumulated over batches, as the evaluator does
            collection.update(preds[i:i + 64], labels[i:i + 64])
        ours = {k: float(v) for k, v in collection.compute().items()}
        y, p = labels.numpy(), preds.numpy()
        reference = {"accuracy": skm.accuracy_score(y, p), "f1": skm.f1_score(y, p),
                     "mcc": skm.matthews_corrcoef(y, p)}
        assert set(ours) == set(spec.metrics)
        for metric, value in ours.items():
            assert value == pytest.approx(reference[metric], abs=1e-6), (name, metric)


def test_regression_metrics_equal_scipy():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(500, generator=gen) * 5
    preds = scores + torch.randn(500, generator=gen)
    preds[:20] = preds[20:40]  # ties, where Spearman's ranks average
    collection = glue.metrics(task("stsb"))
    for i in range(0, 500, 128):
        collection.update(preds[i:i + 128], scores[i:i + 128])
    ours = {k: float(v) for k, v in collection.compute().items()}
    x, y = preds.double().numpy(), scores.double().numpy()
    assert ours["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-5)
    assert ours["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-5)
    assert np.isfinite(list(ours.values())).all()


def test_primary_metric_is_the_first_and_every_task_has_one():
    assert glue.primary_metric(task("cola")) == "mcc"
    assert glue.primary_metric(task("stsb")) == "pearson"
    assert all(glue.primary_metric(spec) == spec.metrics[0] for spec in TASKS.values())


def _tiny_bert(tmp_path, num_labels):
    """A random BERT classifier and a WordPiece tokenizer over a small vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w for line in (TEXTS_A + TEXTS_B) for w in line.lower().split()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path)  # (vocab_file=... builds a 5-token one)
    assert len(tokenizer) == len(words) + 5
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(words) + 5, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, num_labels=num_labels)).eval()
    return model, tokenizer


FIRST = ["the cat sat on the mat", "a dog ran", "stocks fell sharply on monday after the report",
         "he said so", "it rained all day in the city and nobody went out"]
SECOND = ["a cat was sitting", "the dog is running fast", "markets dropped"]
# 15 distinct pairs of different lengths (repeated pairs would tie, and ties make ranks fragile)
TEXTS_A, TEXTS_B = map(list, zip(*[(a, b) for a in FIRST for b in SECOND]))


@pytest.mark.parametrize("name", ["mrpc", "stsb"])
def test_evaluator_on_padded_batches_equals_one_example_at_a_time(tmp_path, name):
    """Batches pad to their longest pair: the attention mask must make padding invisible, so the
    metrics equal scikit-learn's / scipy's on predictions made one unpadded example at a time."""
    from quadapter.data.glue import GlueSplit

    spec = task(name)
    labels = tuple(float(i % 6) if spec.is_regression else i % 2 for i in range(len(TEXTS_A)))
    split = GlueSplit(spec, "dev", (tuple(TEXTS_A), tuple(TEXTS_B)), labels, tmp_path / "dev.tsv")
    model, tokenizer = _tiny_bert(tmp_path, spec.num_labels)
    encoded = glue.encode(split, tokenizer, max_length=16)
    assert max(len(f["input_ids"]) for f in encoded.features) == 16  # the longest pair is truncated
    ours = glue.evaluate(model, encoded, tokenizer, spec, batch_size=4)
    with torch.no_grad():
        single = torch.stack([
            glue.predictions(model(**{k: torch.tensor([v]) for k, v in f.items()}).logits, spec)[0]
            for f in encoded.features]).numpy()
    y = np.array(labels)
    if spec.is_regression:
        reference = {"pearson": stats.pearsonr(single, y).statistic,
                     "spearman": stats.spearmanr(single, y).statistic}
    else:
        reference = {"accuracy": skm.accuracy_score(y, single), "f1": skm.f1_score(y, single)}
    assert set(ours) == set(reference)
    for metric, value in reference.items():
        assert ours[metric] == pytest.approx(100 * value, abs=1e-2), metric  # percent; fp32 logits
