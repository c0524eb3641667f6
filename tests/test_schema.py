"""Config schema: a bad type, value or combination fails before any heavy work, in one message
naming the key, the bad value and what is allowed (``quadapter.schema.validate``)."""

import inspect
import itertools
import subprocess
import sys

import pytest
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from quadapter.errors import ConfigError, UserError
from quadapter.schema import groups, validate

DELETE = object()  # mutate(): remove the key


def make(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


@pytest.fixture(scope="module")
def base():
    """One composed config per method (composing costs ~0.4 s; the cases below mutate copies)."""
    return {"fp": make(), "ptq": make("method=ptq"), "qat": make("method=qat"),
            "quadapter": make("method=quadapter"), "smoothquant": make("compare=smoothquant"),
            "real": make("method=qat", "dataset=ptb", "eval=real")}


def mutate(cfg, **changes):
    """A copy of ``cfg`` with dotted keys (``__`` for ``.``) set, as an override would set them."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # unresolved: interpolations stay
    with open_dict(cfg):
        for key, value in changes.items():
            key = key.replace("__", ".")
            if value is DELETE:
                parent, _, leaf = key.rpartition(".")
                del OmegaConf.select(cfg, parent)[leaf]
            else:
                OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def error(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert isinstance(e.value, UserError) and e.value.args[0].startswith("config error: ")
    return str(e.value)


# (base, changes, fragments every one of which the message must contain)
BAD = [
    # bits: integers in 2..16 or null
    ("ptq", dict(bits__weight=3.5),
     ["bits.weight=3.5 is invalid: expected an integer in 2..16, ternary or binary, or null",
      "e.g. bits=w4a8"]),
    ("ptq", dict(bits__weight="ternery"), ["bits.weight='ternery' is invalid: expected an integer in "
                                           "2..16, ternary or binary"]),
    ("ptq", dict(bits__act="binary", bits__name="random"),
     ["bits.act='binary' is invalid: expected an integer in 2..16 or null",
      "ternary and binary are weight quantizers"]),
    ("ptq", dict(bits__weight="binary"), ["bits.name='w8a8' does not match bits.weight='binary', "
                                          "bits.act=8", "bits.name=wbin_a8"]),
    ("ptq", dict(quantizer__weight__ternary_threshold=-0.1),
     ["quantizer.weight.ternary_threshold=-0.1 is invalid: expected a finite number >= 0"]),
    ("ptq", dict(bits__act=0), ["bits.act=0 is invalid: expected an integer in 2..16 or null"]),
    ("ptq", dict(bits__act=17), ["bits.act=17 is invalid: expected an integer in 2..16"]),
    ("ptq", dict(bits__weight=1), ["bits.weight=1 is invalid: expected an integer in 2..16"]),
    ("ptq", dict(bits__act="8"), ["bits.act='8' is invalid: expected an integer in 2..16"]),
    ("ptq", dict(bits__weight=True), ["bits.weight=true is invalid: expected an integer in 2..16"]),
    ("ptq", dict(bits__weight="???"), ["bits.weight is missing: expected an integer in 2..16"]),
    ("ptq", dict(bits__weight=4), ["bits.name='w8a8' does not match bits.weight=4, bits.act=8",
                                   "bits.name=w4a8"]),
    ("ptq", dict(bits__weight=None, bits__act=None),
     ["method=ptq with bits.weight=null and bits.act=null quantizes nothing"]),
    # quantizer: enumerations, flags, estimator options, sites
    ("ptq", dict(quantizer__act__granularity="per_row"),
     ["quantizer.act.granularity='per_row' is invalid: expected one of per_tensor, per_channel, "
      "per_token"]),
    ("ptq", dict(quantizer__weight__granularity="per_token"),
     ["quantizer.weight.granularity='per_token' is invalid: expected one of per_tensor, per_channel"]),
    ("ptq", dict(quantizer__estimator="histogram"),
     ["quantizer.estimator='histogram' is invalid: expected one of minmax, running_minmax, "
      "percentile, mse"]),
    ("ptq", dict(quantizer__learnable="lsq"),
     ["quantizer.learnable='lsq' is invalid: expected one of none, scale_offset, min_max, beta_gamma"]),
    ("ptq", dict(quantizer__act__symmetric="maybe"),
     ["quantizer.act.symmetric='maybe' is invalid: expected true or false"]),
    ("ptq", dict(quantizer__act__symmetric=1),
     ["quantizer.act.symmetric=1 is invalid: expected true or false"]),
    ("ptq", dict(quantizer__sigmoid=True),
     ["quantizer.sigmoid=true is invalid: expected false unless quantizer.learnable=beta_gamma",
      "quantizer.learnable='none'"]),
    ("ptq", dict(quantizer__estimator="percentile", quantizer__estimator_kw={"percentile": 20}),
     ["quantizer.estimator_kw.percentile=20 is invalid: expected a number in (50, 100]"]),
    ("ptq", dict(quantizer__estimator="mse", quantizer__estimator_kw={"num_candidates": 0}),
     ["quantizer.estimator_kw.num_candidates=0 is invalid: expected an integer >= 1"]),
    ("ptq", dict(quantizer__estimator_kw={"momentum": 0.5}),
     ["quantizer.estimator_kw.momentum is not a config key; quantizer.estimator_kw has no keys"]),
    ("ptq", dict(quantizer__sites=["attn.c_attn", "attn_probs"]),
     ["quantizer.sites=['attn.c_attn', 'attn_probs'] is invalid: expected null (every block linear) "
      "or a non-empty list of distinct gpt2 sites from attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, "
      "lm_head, embeddings, residual; unknown: 'attn_probs'"]),
    ("ptq", dict(quantizer__sites=[]), ["quantizer.sites=[] is invalid", "the list is empty"]),
    ("ptq", dict(quantizer__calibration__blocks=0),
     ["quantizer.calibration.blocks=0 is invalid: expected an integer >= 1"]),
    ("ptq", dict(quantizer__calibration__batch_size=-2),
     ["quantizer.calibration.batch_size=-2 is invalid: expected an integer >= 1"]),
    ("ptq", dict(quantizer=DELETE),
     ["quantizer is missing: expected a mapping with keys name, estimator"]),
    ("ptq", dict(quantizer={"name": "none"}),
     ["method=ptq with quantizer=none has no quantization ranges: choose quantizer=minmax"]),
    ("ptq", dict(quantizer__act=DELETE), ["quantizer.act is missing", "method=ptq needs it"]),
    # adapter sites (GPT-2's scale sites), init, migration
    ("quadapter", dict(adapter__sites=["ln1_qkv", "mlp_out"]),
     ["adapter.sites=['ln1_qkv', 'mlp_out'] is invalid: expected a non-empty list of distinct gpt2 "
      "scale regions from ln1_qkv (ln_1 -> attn.c_attn), ln2_fc (ln_2 -> mlp.c_fc), v_proj (V of "
      "attn.c_attn -> attn.c_proj); unknown: 'mlp_out'"]),
    ("quadapter", dict(adapter__sites=["ln1_qkv", "ln1_qkv"]), ["adapter.sites=", "it repeats a value"]),
    ("smoothquant", dict(adapter__sites=[]), ["adapter.sites=[] is invalid", "the list is empty"]),
    ("quadapter", dict(adapter__init="zeros"),
     ["adapter.init='zeros' is invalid: expected one of ones, smoothquant"]),
    ("smoothquant", dict(adapter__migration=2.0),
     ["adapter.migration=2.0 is invalid: expected a number in [0, 1]"]),
    ("quadapter", dict(adapter__name="lora"),
     ["adapter.name='lora' is invalid: expected one of none, quadapter, smoothquant"]),
    # learning rates, steps, batch sizes
    ("qat", dict(method__lr__weights=0), ["method.lr.weights=0 is invalid: expected a finite number > 0"]),
    ("qat", dict(method__lr__ranges=-1e-3),
     ["method.lr.ranges=-0.001 is invalid: expected a finite number > 0"]),
    ("quadapter", dict(method__lr__alpha=-0.01),
     ["method.lr.alpha=-0.01 is invalid: expected a finite number > 0"]),
    ("quadapter", dict(method__blockwise__lr=0.0),
     ["method.blockwise.lr=0.0 is invalid: expected a finite number > 0"]),
    ("quadapter", dict(method__blockwise__lr_ranges=-1),
     ["method.blockwise.lr_ranges=-1 is invalid: expected a finite number > 0"]),
    ("fp", dict(model__pretrain__lr=0), ["model.pretrain.lr=0 is invalid: expected a finite number > 0"]),
    ("qat", dict(method__lr__weights="fast"),
     ["method.lr.weights='fast' is invalid: expected a finite number > 0"]),
    ("qat", dict(method__train__steps=0), ["method.train.steps=0 is invalid: expected an integer >= 1"]),
    ("qat", dict(method__train__batch_size=-1),
     ["method.train.batch_size=-1 is invalid: expected an integer >= 1"]),
    ("qat", dict(method__train__warmup_steps=-1),
     ["method.train.warmup_steps=-1 is invalid: expected an integer >= 0"]),
    ("qat", dict(method__train__train_tokens=0),
     ["method.train.train_tokens=0 is invalid: expected an integer >= 1 or null"]),
    ("quadapter", dict(method__e2e__steps=0),
     ["method.e2e.steps=0 is invalid: expected an integer >= 1"]),
    ("quadapter", dict(method__blockwise__batch_size=0),
     ["method.blockwise.batch_size=0 is invalid: expected an integer >= 1"]),
    ("fp", dict(model__pretrain__steps=0),
     ["model.pretrain.steps=0 is invalid: expected an integer >= 1"]),
    ("fp", dict(model__pretrain__batch_size=0),
     ["model.pretrain.batch_size=0 is invalid: expected an integer >= 1"]),
    ("fp", dict(eval__batch_size=0), ["eval.batch_size=0 is invalid: expected an integer >= 1"]),
    ("fp", dict(trainer__val_check_interval=0.5),
     ["trainer.val_check_interval=0.5 is invalid: expected an integer >= 1"]),
    # eval protocol
    ("fp", dict(eval__context=64, eval__stride=128),
     ["eval.stride=128 is larger than eval.context=64", "use a stride <= context"]),
    ("fp", dict(eval__context=0), ["eval.context=0 is invalid: expected an integer >= 1 or null"]),
    ("fp", dict(eval__stride=-1), ["eval.stride=-1 is invalid: expected an integer >= 1 or null"]),
    ("fp", dict(eval__max_tokens=0), ["eval.max_tokens=0 is invalid: expected an integer >= 1 or null"]),
    ("fp", dict(eval__val_max_tokens=-5),
     ["eval.val_max_tokens=-5 is invalid: expected an integer >= 1"]),
    ("fp", dict(eval__context=512),
     ["eval.context=512 is larger than the model's maximum context (model.pretrain.block_size=128)"]),
    ("fp", dict(eval__split="valid"),
     ["eval.split='valid' is invalid for dataset 'prose' (dataset): it has the splits train, "
      "validation, test"]),
    # held-out sets that are not (well) defined
    ("fp", {"eval.sets.ptb": "ptb"},
     ["eval.sets.ptb='ptb' is invalid: expected a mapping with keys name, variant, source",
      "+dataset@eval.sets.<name>=<dataset>"]),
    ("fp", {"eval.sets.mine": {"name": "mine"}},
     ["eval.sets.mine.variant is missing", "eval.sets.mine.joiner is missing"]),
    ("fp", {"eval.sets.code.name": "code2"},
     ["eval.sets.code is dataset 'code2' (eval.sets.code.name): held-out sets are keyed by their name"]),
    ("fp", {"eval.sets.prose.variant": "other-prose"},
     ["eval.sets.prose and dataset are both named 'prose' but are different data"]),
    ("fp", {"eval.sets.code.embedded.domain": "poetry"},
     ["eval.sets.code.embedded.domain='poetry' is invalid: expected one of prose, code"]),
    # datasets: source, local format, splits the method reads
    ("fp", dict(dataset__source="web"),
     ["dataset.source='web' is invalid: expected one of auto, embedded, local, hub"]),
    ("fp", dict(dataset__source="hub"),
     ["dataset.source='hub' is invalid for dataset 'prose': it has no hub location (dataset.hub is "
      "null); use dataset.source=embedded"]),
    ("real", dict(dataset__local__format="csv"),
     ["dataset.local.format='csv' is invalid: expected one of wikitext, lines, jsonl"]),
    ("real", dict(dataset__source="local"),
     ["dataset.source='local' needs a data dir for dataset 'ptb': set QUADAPTER_DATA_DIR"]),
    ("real", dict(paths__data_dir="/data", quantizer__calibration__split="dev"),
     ["quantizer.calibration.split='dev' is invalid for dataset 'ptb' (dataset): it has the splits "
      "train, validation, test"]),
    ("real", {"paths.data_dir": "/data", "dataset": OmegaConf.create(
        {"name": "lambada", "variant": "lambada_openai", "source": "auto", "embedded": None,
         "hub": {"path": "EleutherAI/lambada_openai", "name": "default", "text_field": "text",
                 "revision": None},
         "local": {"dir": "lambada", "format": "jsonl", "text_field": "text",
                   "files": {"test": "lambada_test.jsonl"}}, "joiner": "\n\n"}),
      "quantizer.calibration.split": "test"},
     ["method=qat trains on the train split of dataset 'lambada', which has only test"]),
    # trainer, logger
    ("fp", dict(trainer__precision="8-mixed"),
     ["trainer.precision='8-mixed' is invalid: expected one of 32-true, 32, bf16-mixed, 16-mixed"]),
    ("fp", dict(trainer__accelerator="tpu"),
     ["trainer.accelerator='tpu' is invalid: expected one of auto, cpu, gpu, cuda"]),
    ("fp", dict(trainer__devices=2), ["trainer.devices=2 is invalid: expected 1 (one device per run"]),
    ("fp", dict(logger__wandb__mode="live"),
     ["logger.wandb.mode='live' is invalid: expected one of auto, online, offline, disabled"]),
    ("fp", dict(logger__csv="yes"), ["logger.csv='yes' is invalid: expected true or false"]),
    # model
    ("fp", dict(model__pretrain__n_head=5),
     ["model.pretrain.n_head=5 does not divide model.pretrain.n_embd=192"]),
    ("fp", dict(model__pretrain__domains=["prose", "poetry"]),
     ["model.pretrain.domains=['prose', 'poetry'] is invalid", "unknown: 'poetry'"]),
    ("fp", dict(model__pretrain=None),
     ["model.name_or_path=null needs model.pretrain", "set model.name_or_path"]),
    ("fp", dict(model__outlier_profile={"channels": 500}),
     ["model.outlier_profile.channels=500 is invalid: expected an integer in 1..192"]),
    ("fp", dict(model__outlier_profile={"factor": 0}),
     ["model.outlier_profile.factor=0 is invalid: expected a finite number > 0"]),
    ("fp", dict(model__dtype="int8"),
     ["model.dtype='int8' is invalid: expected one of float32, float16, bfloat16, float64"]),
    # unknown keys (what `+key=value` adds; without `+` Hydra refuses them itself)
    ("fp", {"eval.strid": 5},
     ["eval.strid is not a config key (did you mean eval.stride?); eval has: sets, name, split, "
      "context, stride"]),
    ("quadapter", {"method.lr.alhpa": 1.0}, ["method.lr.alhpa is not a config key (did you mean "
                                             "method.lr.alpha?)"]),
    ("fp", {"trainer.max_epochs": 3}, ["trainer.max_epochs is not a config key"]),
    ("fp", {"method.name": "awq"},
     ["method.name='awq' is invalid: expected one of fp, ptq, qat, quadapter"]),
    ("fp", {"run_name": "${nope}"}, ["run_name: an interpolation cannot be resolved"]),
    # numbers a library would refuse later: seeds outside numpy's range, infinite rates
    ("fp", dict(seed=-1), ["seed=-1 is invalid: expected an integer in 0..4294967295"]),
    ("fp", dict(seed=2**32), ["seed=4294967296 is invalid: expected an integer in 0..4294967295"]),
    ("qat", dict(method__lr__weights=float("inf")),
     ["method.lr.weights=inf is invalid: expected a finite number > 0"]),
    ("qat", dict(method__lr__weights=float("nan")),
     ["method.lr.weights=nan is invalid: expected a finite number > 0"]),
    ("qat", dict(trainer__gradient_clip_val=float("inf")),
     ["trainer.gradient_clip_val=inf is invalid: expected a finite number >= 0"]),
]


@pytest.mark.parametrize("name,changes,fragments", BAD,
                         ids=[",".join(f"{k}={v!r}"[:40] for k, v in c.items()) for _, c, _ in BAD])
def test_bad_value_names_key_value_and_allowed(base, name, changes, fragments):
    message = error(mutate(base[name], **changes))
    for fragment in fragments:
        assert fragment in message, message


class Group:
    """mutate(): a whole group as composed in another base config, e.g. Group("quadapter", "adapter")."""

    def __init__(self, name: str, key: str):
        self.name, self.key = name, key


# method x adapter x quantizer combinations that are each well-typed but do not make a run
COMBINATIONS = [
    ("qat", dict(adapter=Group("quadapter", "adapter")),
     "method=qat does not use adapters, so adapter=quadapter would be ignored: use method=quadapter"),
    ("qat", dict(adapter=Group("smoothquant", "adapter")),
     "method=qat does not use adapters, so adapter=smoothquant would be ignored: use method=ptq "
     "adapter=smoothquant"),
    ("ptq", dict(adapter=Group("quadapter", "adapter")),
     "method=ptq never trains Quadapter's α (it would stay 1): use method=quadapter to learn it, or "
     "adapter=smoothquant"),
    ("fp", dict(adapter=Group("smoothquant", "adapter")),
     "method=fp evaluates the model as loaded, so adapter=smoothquant would be ignored"),
    ("quadapter", dict(adapter=Group("fp", "adapter")),
     "method=quadapter needs adapter=quadapter (got adapter=none)"),
    ("quadapter", dict(adapter=Group("smoothquant", "adapter")),
     "method=quadapter needs adapter=quadapter (got adapter=smoothquant): to start α from "
     "SmoothQuant's scales use adapter=quadapter adapter.init=smoothquant"),
    ("quadapter", dict(quantizer=Group("qat", "quantizer")),  # quantizer=learned
     "quantizer.learnable='min_max' with method=quadapter and method.learn_ranges=false: the ranges "
     "would be learnable parameters that never train"),
    ("quadapter", dict(method__learn_ranges=True),
     "method.learn_ranges=true needs learnable ranges, but quantizer.learnable='none'"),
    ("quadapter", dict(adapter__sites=["ln1_qkv", "v_proj"],
                       quantizer__weight__granularity="per_tensor"),
     "adapter.sites has v_proj (V of attn.c_attn -> attn.c_proj), which folds exactly into a "
     "quantized linear producer only with per-channel or per-group fixed weight ranges; got "
     "quantizer.weight.granularity='per_tensor'"),
    ("quadapter", dict(quantizer__sites=["attn.c_attn", "attn.c_proj", "mlp.c_proj"]),
     "adapter.sites has ln2_fc, whose consumer(s) mlp.c_fc are not in quantizer.sites"),
    ("smoothquant", dict(bits__act=None, bits__name="w8"),
     "adapter=smoothquant needs quantized activations (bits.act=null)"),
    ("quadapter", dict(adapter__init="smoothquant", bits__act=None, bits__name="w8"),
     "adapter.init=smoothquant needs quantized activations (bits.act=null)"),
    ("qat", dict(bits__weight="ternary", bits__name="wtern_a8"),  # quantizer=learned
     "bits.weight=ternary takes its scale from the weights (mean |W|), not from a learnable range "
     "(quantizer.learnable='min_max'): use quantizer=minmax"),
    ("ptq", dict(bits__weight="binary", bits__name="wbin_a8", quantizer__weight__granularity="per_group",
                 quantizer__weight__group_size=32),
     "quantizer.weight.granularity='per_group' with bits.weight=binary: binary weights take "
     "per_tensor or per_channel"),
    ("qat", dict(quantizer__act__granularity="per_token"),
     "method=qat with quantizer.learnable='min_max' and per_token activations: per-token activation "
     "ranges are recomputed on every token, so there are none to learn"),
]


@pytest.mark.parametrize("name,changes,fragment", COMBINATIONS,
                         ids=[f"{n}:" + ",".join(f"{k}={getattr(v, 'name', v)}" for k, v in c.items())
                              for n, c, _ in COMBINATIONS])
def test_incompatible_combinations_are_refused(base, name, changes, fragment):
    changes = {k: base[v.name][v.key] if isinstance(v, Group) else v for k, v in changes.items()}
    message = error(mutate(base[name], **changes))
    assert fragment in message, message


def test_meaningful_combinations_are_accepted(base):
    for name in base:
        validate(base[name])
    validate(make("method=fp", "bits=w4a4", "quantizer=mse"))  # fp ignores bits and quantizer
    validate(mutate(base["quadapter"], quantizer=base["qat"].quantizer, method__learn_ranges=True))
    validate(mutate(base["quadapter"], adapter__init="smoothquant", adapter__sites=["v_proj"]))
    validate(mutate(base["qat"], quantizer=base["ptq"].quantizer))  # QAT with fixed ranges
    validate(mutate(base["ptq"], bits__weight=None, bits__name="a8"))  # activations only
    validate(make("method=ptq", "bits=wtern_a8"))  # ternary / binary weights with fixed ranges
    validate(make("method=qat", "bits=wbin_a4", "quantizer=minmax"))
    validate(make("method=ptq", "bits=wbin", "quantizer.weight.granularity=per_tensor"))
    validate(mutate(base["fp"], eval__context=128, eval__stride=64, model__outlier_profile={}))
    validate(make("+dataset@eval.sets.ptb=ptb"))  # the documented way to add a held-out set


def test_several_problems_make_one_message_with_a_line_each(base):
    message = error(mutate(base["qat"], bits__weight=3.5, quantizer__act__granularity="per_row",
                           method__lr__weights=-1, eval__context=64, eval__stride=128))
    lines = message.splitlines()
    assert lines[0] == "config error: 4 problems:"
    assert [line.split("=")[0] for line in lines[1:]] == [  # the config's order, then relations
        "  - quantizer.act.granularity", "  - bits.weight", "  - method.lr.weights", "  - eval.stride"]


def test_hydra_reports_unknown_options_and_keys_itself():
    with pytest.raises(MissingConfigException, match=r"Could not find 'bits/w3a3'[\s\S]*w4a8"):
        make("bits=w3a3")
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'eval.strid'"):
        make("eval.strid=5")


# keys of other methods, added with `++` so one override reaches every method of a sweep (test_cli)
CROSS_METHOD = ["++method.train.steps=4", "++method.e2e.steps=4", "++method.blockwise.steps=5",
                "++quantizer.calibration.blocks=8", "++adapter.migration=0.8"]


def test_default_comparison_sweep_is_valid_also_with_cross_method_overrides():
    """Every run `quadapter -m` launches (conf/config.yaml hydra.sweeper.params) validates, and
    keys that only another method (or adapter) has, added to all with ++, are not refused."""
    params = make(hydra_config=True).hydra.sweeper.params
    for combo in sweep(params):
        validate(make(*combo))
        validate(make(*combo, *CROSS_METHOD))
    assert "method.train.stpes is not a config key (did you mean method.train.steps?)" in error(
        make("method=qat", "++method.train.stpes=4"))
    assert "method.lr.weights=0 is invalid" in error(make("method=qat", "++method.lr.weights=0"))
    validate(make("method=quadapter", "++method.lr.weights=0"))  # QAT's key: quadapter ignores it


def sweep(params) -> list[list[str]]:
    """The override lists of a Hydra basic-sweeper grid."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [f"{o.get_key_element()}={o.get_value_element_as_str()}"] for o in parsed]
    return [list(c) for c in itertools.product(*axes)]


METHOD_OF_ADAPTER = {"quadapter": "method=quadapter", "smoothquant": "method=ptq"}
NEEDS = {"distill=kd": ["task=glue", "method=qat", "distill.teacher=runs/teacher"],
         "compare=progressive_kd": ["task=glue", "task.finetune.load=runs/teacher"],
         "compare=progressive_kd_aug": ["task=glue", "task.finetune.load=runs/teacher"]}  # options that only validate beside others
GLUE_OPTIONS = {"eval=glue", "method=prequant", "compare=prequant", "model=minilm-l6",
                "model=bert-base-uncased", "model=roberta-base"}  # and dataset=glue_*: task=glue's


@pytest.mark.slow
@pytest.mark.parametrize("group,option", [(d.name, p.stem) for d in sorted(CONF.iterdir())
                                          if d.is_dir() and d.name not in ("hydra", "hparams_search")
                                          for p in sorted(d.glob("*.yaml"))])
def test_every_shipped_option_and_experiment_sweep_validates(group, option):
    extra = [METHOD_OF_ADAPTER[option]] if group == "adapter" and option in METHOD_OF_ADAPTER else []
    if f"{group}={option}" in GLUE_OPTIONS or (group == "dataset" and option.startswith("glue_")):
        extra.append("task=glue")
    extra += NEEDS.get(f"{group}={option}", [])
    cfg = make(f"{group}={option}", *extra, hydra_config=group == "experiment")
    if group == "experiment" and cfg.hydra.sweeper.get("params"):
        for combo in sweep(cfg.hydra.sweeper.params):
            validate(make(f"{group}={option}", *combo))
    validate(cfg)  # with its hydra node, when it has one


def test_schema_imports_no_torch():
    code = "import sys, quadapter.schema; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_schema_names_equal_the_code_registries():
    from quadapter.data import corpora, embedded
    from quadapter.methods import METHODS, quadapter
    from quadapter.quant import ESTIMATORS, LEARNABLE, ranges
    from quadapter.methods import quant_config
    from quadapter.tracking import WANDB_MODES

    assert groups.ESTIMATORS == tuple(ESTIMATORS) and groups.LEARNABLE == LEARNABLE
    from quadapter.methods import blockptq

    assert groups.BLOCKPTQ_LEARNS == blockptq.LEARNABLE
    from quadapter.methods import kd_pretrain

    assert groups.KD_STUDENTS == kd_pretrain.STUDENTS and groups.KD_DATA == kd_pretrain.DATA
    assert groups.WEIGHT_GRANULARITIES == quant_config.WEIGHT_GRANULARITIES
    assert groups.ACT_GRANULARITIES == quant_config.ACT_GRANULARITIES
    from quadapter.quant import levels

    assert (groups.WEIGHT_LEVELS, groups.LEVEL_GRANULARITIES) == (levels.LEVELS, levels.LEVEL_GRANULARITIES)
    from quadapter.methods import progressive

    assert groups.PROGRESSIVE_STARTS == progressive.STARTS
    from quadapter.data.augment import AUGMENTERS

    assert groups.AUGMENTERS == AUGMENTERS
    assert groups.ADAPTER_INITS == quadapter.INITS
    assert (groups.SOURCES, groups.LOCAL_FORMATS) == (corpora.SOURCES, corpora.LOCAL_FORMATS)
    assert (groups.EMBEDDED_DOMAINS, groups.EMBEDDED_SPLITS) == (embedded.DOMAINS, embedded.SPLITS)
    assert groups.WANDB_MODES == WANDB_MODES and set(groups.METHODS) == set(METHODS)
    assert groups.SAMPLE_SEED == ranges.SAMPLE_SEED
    from quadapter.data.glue import TASKS as GLUE_TASKS
    from quadapter.tasks import TASKS

    assert groups.TASKS == tuple(TASKS) and groups.GLUE_TASKS == tuple(GLUE_TASKS)
    assert groups.TASK_HEADS == {name: task.head for name, task in TASKS.items()}
    assert set(groups.TASK_CONFIGS) == set(TASKS)
    for name, options in groups.ESTIMATOR_OPTIONS.items():  # the estimator's own keyword arguments
        params = inspect.signature(ESTIMATORS[name]).parameters
        own = {p for p in params if p not in ("axis", "bits", "symmetric")}
        fields = {f for f in options.__dataclass_fields__}
        assert fields == own, name
        assert all(getattr(options(), f) == params[f].default for f in fields), name


# ---- property: validate() and the code that builds the quantizers agree -------------------------

ANY_BITS = st.one_of(st.integers(-4, 40), st.floats(allow_nan=False, width=32), st.booleans(),
                     st.sampled_from(["8", "4", "", "w8", "ternary", "Binary"]), st.just([8]))
ANY_GRANULARITY = st.one_of(st.sampled_from(["per_token", "per_row", "PER_TENSOR", ""]),
                            st.text(max_size=12), st.integers(0, 3), st.none())
VALID_BITS = st.one_of(st.none(), st.integers(2, 16))
VALID_WEIGHT_BITS = st.one_of(VALID_BITS, st.sampled_from(["ternary", "binary"]))
VALID = {"weight": VALID_WEIGHT_BITS, "act": VALID_BITS,
         "weight_granularity": st.sampled_from(["per_tensor", "per_channel"]),
         "act_granularity": st.sampled_from(["per_tensor", "per_channel", "per_token"])}
ANY = {"weight": ANY_BITS, "act": ANY_BITS, "weight_granularity": ANY_GRANULARITY,
       "act_granularity": ANY_GRANULARITY}
OUTCOMES = {"accepted": 0, "refused": 0}


@st.composite
def quant_keys(draw) -> dict:
    """The four keys, each valid or arbitrary: all valid in about a fifth of the examples."""
    arbitrary = draw(st.sampled_from([set(), {"weight"}, {"act"}, {"weight_granularity"},
                                      {"act_granularity"}, set(ANY)]))
    return {k: draw(ANY[k] if k in arbitrary else VALID[k]) for k in VALID}, arbitrary


@settings(max_examples=150, deadline=None)
@given(drawn=quant_keys())
def test_validate_accepts_exactly_what_the_quantizers_can_be_built_from(base, drawn):
    """validate() accepts (and the quantizers then build) or refuses naming a key, never raises
    anything else; with every key drawn valid it refuses only a config that quantizes nothing."""
    from quadapter.methods.quant_config import quant_settings

    keys, arbitrary = drawn
    weight, act = keys["weight"], keys["act"]
    weight_granularity, act_granularity = keys["weight_granularity"], keys["act_granularity"]
    cfg = mutate(base["ptq"], bits__name="random", bits__weight=weight, bits__act=act,
                 quantizer__weight__granularity=weight_granularity,
                 quantizer__act__granularity=act_granularity)
    try:
        validate(cfg)
    except ConfigError as e:
        names = ["bits.weight", "bits.act", "quantizer.weight.granularity", "quantizer.act.granularity"]
        assert any(k in str(e) for k in names), str(e)
        assert arbitrary or (weight, act) == (None, None), str(e)
        OUTCOMES["refused"] += 1
        return
    OUTCOMES["accepted"] += 1
    s = quant_settings(cfg, "ptq")  # accepted: the run builds its quantizers from it
    assert (s.weight and s.weight.bits, s.act and s.act.bits) == (weight, act)
    assert s.weight is None or s.weight.granularity == weight_granularity
    assert s.act is None or s.act.granularity == act_granularity


def test_the_property_saw_both_outcomes():
    """Runs after the property test (file order): its examples were not all refused."""
    if sum(OUTCOMES.values()) == 0:
        pytest.skip("the property test did not run in this session")
    assert OUTCOMES["accepted"] >= 5 and OUTCOMES["refused"] >= 5, OUTCOMES
