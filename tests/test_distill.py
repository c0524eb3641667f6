"""distill=kd: the distillation loss against scipy/numpy on real model outputs, a teacher saved by
an FP GLUE run and used by QAT and the progressive schedule, and every bad teacher refused in one
line before the run starts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import glue_cfg, needs_shared_data
from scipy.special import log_softmax, rel_entr, softmax

from quadapter.errors import ConfigError
from quadapter.methods import check_config
from quadapter.methods.distill import DistillationLoss
from quadapter.runner import run
from quadapter.tasks.glue import Glue
from quadapter.tasks.lm import LanguageModelling

GLUE, LM = Glue.model_inputs, LanguageModelling.model_inputs  # how each task's batches unpack


def _bert(num_labels: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, num_labels=num_labels, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)  # logits of order 1, so the KL is not at float32's noise
    return model


def _batch(num_labels: int):
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 50, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # a padded example: its padding must not count in the hidden-state term
    mask[2, 4:] = 0
    labels = torch.rand(3, generator=gen) if num_labels == 1 else torch.tensor([0, 1, 1])
    return {"input_ids": ids, "attention_mask": mask}, labels


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_loss_terms_equal_scipy_and_numpy_on_the_same_outputs(temperature):
    student, teacher = _bert(2, 0), _bert(2, 1)
    inputs, labels = _batch(2)
    loss = DistillationLoss(teacher, temperature, task=0.3, logits=2.0, hidden=0.5, unpack=GLUE)
    parts = {k: v.item() for k, v in loss.parts(student, (inputs, labels)).items()}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True)
        t = teacher(**inputs, output_hidden_states=True)
    ps, pt = s.logits.double().numpy(), t.logits.double().numpy()
    kl = rel_entr(softmax(pt / temperature, -1), softmax(ps / temperature, -1)).sum(-1).mean()
    assert parts["logits"] == pytest.approx(kl * temperature**2, rel=1e-5)
    ce = -log_softmax(ps, -1)[np.arange(3), labels.numpy()].mean()
    assert parts["task"] == pytest.approx(ce, rel=1e-5)
    m = inputs["attention_mask"].numpy().astype(bool)
    mse = np.mean([((a.numpy() - b.numpy())[m] ** 2).mean() for a, b in zip(s.hidden_states, t.hidden_states)])
    assert len(s.hidden_states) == 3 and parts["hidden"] == pytest.approx(mse, rel=1e-5)
    total = loss(student, (inputs, labels)).item()
    assert total == pytest.approx(0.3 * ce + 2.0 * kl * temperature**2 + 0.5 * mse, rel=1e-5)


def test_a_student_equal_to_its_teacher_only_pays_the_task_loss_and_regression_uses_mse():
    student = _bert(1, 0)
    inputs, labels = _batch(1)
    parts = DistillationLoss(_bert(1, 0), 1.0, 1.0, 1.0, 1.0, GLUE).parts(student, (inputs, labels))
    assert parts["logits"].item() == 0 and parts["hidden"].item() == 0
    other = DistillationLoss(_bert(1, 3), 1.0, 1.0, 1.0, 0.0, GLUE).parts(student, (inputs, labels))
    with torch.no_grad():
        diff = student(**inputs).logits - _bert(1, 3)(**inputs).logits
    assert "hidden" not in other and other["logits"].item() == pytest.approx(diff.pow(2).mean().item())


@pytest.fixture(scope="module")
def teacher_run(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "fp"
    res = run(glue_cfg(tiny_bert_dir, "task.finetune.save=true"), out)
    assert res["status"] == "completed" and res["saved"] == str(out / "finetuned")
    return out


@needs_shared_data
def test_qat_and_progressive_train_on_the_teachers_outputs(tiny_bert_dir, teacher_run, tmp_path):
    kd = ["distill=kd", f"distill.teacher={teacher_run}"]
    qat = ["method=qat", "bits=w4a8", "method.train.steps=2", "method.train.batch_size=4",
           "method.train.warmup_steps=0"]
    with_kd = run(glue_cfg(tiny_bert_dir, *qat, *kd), tmp_path / "qat-kd")
    without = run(glue_cfg(tiny_bert_dir, *qat), tmp_path / "qat")
    assert with_kd["status"] == "completed" and with_kd["distill"]["teacher"] == str(teacher_run)
    teacher = json.loads((teacher_run / "results.json").read_text())
    assert with_kd["distill"]["teacher_metrics"] == teacher["metrics"]
    assert "distill" not in without
    # the same batches, another loss: the curves' running train loss differs from step 2 on
    assert with_kd["training"]["curves"][0] == without["training"]["curves"][0]
    assert with_kd["training"]["curves"][1]["train/loss_mean"] != without["training"]["curves"][1]["train/loss_mean"]
    stages = ("method.stages=[{weight: 4, act: null, steps: 2, lr: 1.0e-3},"
              "{weight: binary, act: 8, steps: 2, lr: 1.0e-3}]")
    progressive = run(glue_cfg(tiny_bert_dir, "method=progressive", stages, "method.train.batch_size=4",
                               "quantizer.calibration.blocks=8", *kd), tmp_path / "progressive")
    assert progressive["status"] == "completed" and progressive["distill"]["teacher"] == str(teacher_run)


@needs_shared_data
def test_bad_teachers_and_misplaced_distillation_are_refused_in_one_line(tiny_bert_dir, teacher_run, tmp_path):
    qat = ["method=qat", "bits=w4a8", "distill=kd"]

    def refused(*overrides) -> str:
        with pytest.raises(ConfigError) as e:
            check_config(glue_cfg(tiny_bert_dir, *overrides))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "distill=kd needs distill.teacher" in refused(*qat)
    assert "is not a run dir (no results.json)" in refused(*qat, f"distill.teacher={tmp_path}")
    assert "dataset 'glue_mrpc' (needs 'glue_rte')" in refused(
        *qat, f"distill.teacher={teacher_run}", "dataset=glue_rte")
    assert "distill=kd with task=glue method=ptq" in refused("method=ptq", "distill=kd",
                                                             f"distill.teacher={teacher_run}")
    ptq_like = tmp_path / "ptq-run"
    ptq_like.mkdir()
    results = json.loads((teacher_run / "results.json").read_text())
    (ptq_like / "results.json").write_text(json.dumps({**results, "method": "ptq"}))
    assert "method 'ptq' (needs 'fp')" in refused(*qat, f"distill.teacher={ptq_like}")
    (ptq_like / "results.json").write_text(json.dumps(results))
    assert "saved no model" in refused(*qat, f"distill.teacher={ptq_like}")
    # a teacher that reads other token ids: refused when the run loads it, before any step
    other = tmp_path / "other-tokenizer"
    shutil.copytree(teacher_run, other, ignore=shutil.ignore_patterns("checkpoints", "wandb", "csv"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other / "finetuned")
    tokenizer.add_tokens(["paraphrase"])  # one more id: the two would read text differently
    tokenizer.save_pretrained(other / "finetuned")
    with pytest.raises(ConfigError, match="uses another tokenizer than this run's model"):
        run(glue_cfg(tiny_bert_dir, *qat, f"distill.teacher={other}", "method.train.steps=2",
                     "method.train.batch_size=4"), tmp_path / "student")
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert res["status"] == "failed" and "training" not in res  # before any step


def test_distillation_outside_glue_training_is_refused():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["method=qat", "distill=kd", "distill.teacher=/x"])
    with pytest.raises(ConfigError, match="distill=kd with task=lm method=qat"):
        check_config(cfg)


@needs_shared_data
def test_ptq_from_a_saved_finetuning_equals_ptq_that_finetunes_again(tiny_bert_dir, teacher_run, tmp_path):
    """task.finetune.load: the same seed's saved FP fine-tuning replaces fine-tuning again, exactly."""
    ptq = ["method=ptq", "bits=w4", "quantizer.calibration.blocks=8"]
    again = run(glue_cfg(tiny_bert_dir, *ptq), tmp_path / "again")
    loaded = run(glue_cfg(tiny_bert_dir, *ptq, f"task.finetune.load={teacher_run}"), tmp_path / "loaded")
    assert loaded["status"] == again["status"] == "completed"
    assert loaded["metrics"] == again["metrics"]
    assert loaded["training"]["loaded"] == str(teacher_run) and loaded["training"]["steps"] == 0
    assert again["training"]["steps"] > 0
    # fp ignores it (fp makes the saved fine-tuning); a method that starts from pretrained refuses it
    check_config(glue_cfg(tiny_bert_dir, f"task.finetune.load={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match="task.finetune.load applies to the methods that start from"):
        check_config(glue_cfg(tiny_bert_dir, "method=qat", "bits=w4", f"task.finetune.load={teacher_run}"))
    with pytest.raises(ConfigError, match=r"task.finetune.load=.*nowhere is not a run dir \(no results.json\)"):
        check_config(glue_cfg(tiny_bert_dir, *ptq, f"task.finetune.load={tmp_path / 'nowhere'}"))


# ---- intermediate-layer distillation of language models (KnGPT2's ILKD) ---------------------------

def _gpt2(n_layer: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=61, n_positions=16,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def test_uniform_layer_map_matches_ends_and_spaces_evenly():
    from quadapter.methods.distill import uniform_layer_map

    assert uniform_layer_map(2, 4) == [0, 2, 4]
    assert uniform_layer_map(6, 12) == [0, 2, 4, 6, 8, 10, 12]
    assert uniform_layer_map(3, 3) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="give distill.layers explicitly"):
        uniform_layer_map(4, 2)


def test_lm_distillation_with_a_layer_map_equals_numpy_on_the_same_outputs():
    from quadapter.methods.distill import uniform_layer_map

    student, teacher = _gpt2(2, 0), _gpt2(4, 1)
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(3))
    unpack = LM
    layers = uniform_layer_map(2, 4)
    loss = DistillationLoss(teacher, 2.0, task=1.0, logits=1.0, hidden=1.0, attention=1.0, layers=layers,
                            unpack=unpack)
    parts = {k: v.item() for k, v in loss.parts(student, ids).items()}

    def attention_outputs(model):
        outs = []
        hooks = [b.attn.c_proj.register_forward_hook(lambda m, a, o: outs.append(o.detach().numpy()))
                 for b in model.transformer.h]
        with torch.no_grad():
            res = model(ids, labels=ids, output_hidden_states=True)
        for h in hooks:
            h.remove()
        return res, outs

    (s, s_attn), (t, t_attn) = attention_outputs(student), attention_outputs(teacher)
    ps, pt = s.logits.double().numpy(), t.logits.double().numpy()
    kl = rel_entr(softmax(pt / 2.0, -1), softmax(ps / 2.0, -1)).sum(-1).mean()  # mean over all tokens
    assert parts["logits"] == pytest.approx(kl * 4.0, rel=1e-5)
    assert parts["task"] == pytest.approx(s.loss.item(), rel=1e-6)
    hidden = np.mean([((s.hidden_states[i].numpy() - t.hidden_states[j].numpy()) ** 2).mean()
                      for i, j in enumerate(layers)])
    assert parts["hidden"] == pytest.approx(hidden, rel=1e-5)
    attention = np.mean([((s_attn[i - 1] - t_attn[j - 1]) ** 2).mean() for i, j in enumerate(layers) if i])
    assert parts["attention"] == pytest.approx(attention, rel=1e-5)
    assert loss(student, ids).item() == pytest.approx(sum(parts.values()), rel=1e-5)


def test_a_distilled_step_reports_the_task_loss_for_the_curves_beside_the_objective():
    """The curves' train metric (LM: train/ppl) is the task's own loss, not exp of the KD objective."""
    from quadapter.methods.train_module import TrainModule, weight_groups

    student, teacher = _gpt2(2, 0), _gpt2(4, 1)
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(3))
    loss = DistillationLoss(teacher, 1.0, task=1.0, logits=1.0, hidden=1.0, attention=1.0,
                            layers=[0, 2, 4], unpack=LM)
    module = TrainModule(student, weight_groups(student, 1e-3, 0.0), total_steps=1, loss=loss)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    out = module.training_step(ids, 0)
    with torch.no_grad():
        ce = student(ids, labels=ids).loss.item()
    assert out["task_loss"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(sum(v.item() for v in loss.last_terms.values()), rel=1e-6)
    assert out["loss"].item() > ce  # the objective adds the KD terms


def test_the_attention_term_reads_each_family_s_attention_output_site():
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(seed):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2)).eval()

    student, teacher = llama(0), llama(1)
    unpack = LM
    ids = torch.randint(0, 61, (1, 8))
    outs = {"s": [], "t": []}
    for key, model in (("s", student), ("t", teacher)):
        for layer in model.model.layers:
            layer.self_attn.o_proj.register_forward_hook(lambda m, a, o, key=key: outs[key].append(o.detach()))
    parts = DistillationLoss(teacher, 1.0, 1.0, 1.0, 0.0, attention=1.0, unpack=unpack).parts(student, ids)
    expected = torch.stack([(a - b).pow(2).mean() for a, b in zip(outs["s"], outs["t"])]).mean()
    assert parts["attention"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_depth_mismatch_without_a_layer_map_names_the_fix():
    loss = DistillationLoss(_gpt2(4, 1), 1.0, task=1.0, logits=1.0, hidden=1.0,
                            unpack=LM)
    with pytest.raises(ConfigError, match="map the layers"):
        loss.parts(_gpt2(2, 0), torch.randint(0, 61, (1, 8)))
