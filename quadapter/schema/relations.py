"""Checks across keys: combinations that are each well-typed but do not make a run together.

Each check reads the typed config through a ``View``; a key that already failed its own check
makes the checks that read it stand down, so one mistake is reported once.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from quadapter.models.arch import FAMILIES, LinearOutput, families_with_head, family
from quadapter.schema.fields import Problems, list_problem, show
from quadapter.schema.groups import (
    DISTILLING_METHODS,
    OWN_TEACHER_METHODS,
    EMBEDDED_DOMAINS,
    EMBEDDED_SPLITS,
    LEVEL_GRANULARITIES,
    QUANTIZING_METHODS,
    TASK_HEADS,
    WEIGHT_LEVELS,
    bits_name,
    loads_finetuning,
)


class _Skip(Exception):
    """A value the check needs is missing or already reported."""


class View:
    """Reads a dotted key of the typed config, or skips the check (see ``_Skip``)."""

    def __init__(self, data: Mapping[str, Any], problems: Problems):
        self.data, self.problems = data, problems

    def __call__(self, key: str) -> Any:
        for bad in self.problems.bad:
            if bad == key or bad.startswith(key + ".") or key.startswith(bad + "."):
                raise _Skip
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise _Skip
            node = node[part]
        if isinstance(node, str) and node == "???":
            raise _Skip
        return node


Relation = Callable[[View, Problems], None]
RELATIONS: list[Relation] = []


def relation(fn: Relation) -> Relation:
    RELATIONS.append(fn)
    return fn


def run_relations(view: View, problems: Problems) -> None:
    for check in RELATIONS:
        try:
            check(view, problems)
        except _Skip:
            pass


# ---- quantization ------------------------------------------------------------------------------

def _no_bits(name: str) -> str:
    """How a config without quantized bits was given: bits=fp, or both bit-widths nulled by hand
    (then bits.name still says what they were)."""
    return "bits=fp" if name == "fp" else "bits.weight=null and bits.act=null"


@relation
def quantizing_methods_need_bits_and_ranges(v: View, p: Problems) -> None:
    method = v("method.name")
    if method not in QUANTIZING_METHODS:
        return
    weight, act = v("bits.weight"), v("bits.act")
    if weight is None and act is None:
        p.add(["bits.weight", "bits.act"],
              f"method={method} with {_no_bits(v('bits.name'))} quantizes nothing: choose quantized "
              "bits, e.g. bits=w8a8 or bits=w4a8")
    q = v("quantizer")
    if q["name"] == "none" or q["estimator"] is None:
        p.add("quantizer.estimator",
              f"method={method} with quantizer={q['name']} has no quantization ranges: choose "
              "quantizer=minmax, quantizer=percentile, quantizer=mse or quantizer=learned")
        return
    needed = {"weight": weight is not None, "act": act is not None, "learnable": True,
              "sigmoid": True, "calibration": True}
    for key, need in needed.items():
        if need and q[key] is None:
            p.missing(f"quantizer.{key}", f"a value: method={method} needs it",
                      "every key of conf/quantizer/minmax.yaml")


@relation
def sigmoid_only_with_beta_gamma(v: View, p: Problems) -> None:
    learnable = v("quantizer.learnable")
    if v("quantizer.sigmoid") and learnable != "beta_gamma":
        p.invalid("quantizer.sigmoid", True, "false unless quantizer.learnable=beta_gamma",
                  detail=f"quantizer.learnable={show(learnable)}")


@relation
def bits_name_matches_bits(v: View, p: Problems) -> None:
    """The name labels runs, tags and tables: a w8a8 run must not be a W4A8 run in disguise."""
    if v("method.name") == "fp":  # fp records bits=fp whatever the bits group says
        return
    name, weight, act = v("bits.name"), v("bits.weight"), v("bits.act")
    m = re.fullmatch(r"w(\d+)(?:a(\d+))?|w(tern|bin)(?:_a(\d+))?", name)  # w4a8, w4, wtern_a8, wbin
    if (name == "fp" and (weight, act) != (None, None)) or (m and name != bits_name(weight, act)):
        right = bits_name(weight, act)
        p.add("bits.name", f"bits.name={show(name)} does not match bits.weight={show(weight)}, "
                           f"bits.act={show(act)}: choose the preset (e.g. bits=w4a8) or also set "
                           f"bits.name={right} (it names the run in results, tags and tables)")


# ---- method x adapter --------------------------------------------------------------------------

_ADAPTER_FIX = {
    ("fp", "quadapter"): "method=fp evaluates the model as loaded, so adapter=quadapter would be "
                         "ignored: use method=quadapter, or adapter=none",
    ("fp", "smoothquant"): "method=fp evaluates the model as loaded, so adapter=smoothquant would "
                           "be ignored: use method=ptq adapter=smoothquant, or adapter=none",
    ("ptq", "quadapter"): "method=ptq never trains Quadapter's α (it would stay 1): use "
                          "method=quadapter to learn it, or adapter=smoothquant for training-free "
                          "scales",
    ("qat", "quadapter"): "method=qat does not use adapters, so adapter=quadapter would be ignored: "
                          "use method=quadapter, or adapter=none",
    ("qat", "smoothquant"): "method=qat does not use adapters, so adapter=smoothquant would be "
                            "ignored: use method=ptq adapter=smoothquant, or adapter=none",
    ("quadapter", "none"): "method=quadapter needs adapter=quadapter (got adapter=none): it learns "
                           "the α at adapter.sites (ln1_qkv, ln2_fc, v_proj)",
    ("quadapter", "smoothquant"): "method=quadapter needs adapter=quadapter (got "
                                  "adapter=smoothquant): to start α from SmoothQuant's scales use "
                                  "adapter=quadapter adapter.init=smoothquant",
}


@relation
def method_uses_its_adapter(v: View, p: Problems) -> None:
    fix = _ADAPTER_FIX.get((v("method.name"), v("adapter.name")))
    if fix:
        p.add(["method.name", "adapter.name"], fix)


def _quantized_sites(v: View) -> list[str]:
    """The quantizer sites of the run (null: every block linear of the model's family)."""
    sites = v("quantizer.sites")
    return list(FAMILIES[v("model.arch")].block_sites) if sites is None else list(sites)


@relation
def quantizer_sites_belong_to_the_family(v: View, p: Problems) -> None:
    if v("method.name") not in QUANTIZING_METHODS:
        return
    sites, arch = v("quantizer.sites"), family(v("model.arch"), TASK_HEADS[v("task.name")])
    problem = None if sites is None else list_problem(sites, arch.sites)
    if problem:
        p.invalid("quantizer.sites", sites, f"null (every block linear) or a non-empty list of distinct "
                  f"{arch.family} sites from {', '.join(arch.sites)}", detail=problem)


@relation
def adapter_regions_belong_to_the_family(v: View, p: Problems) -> None:
    if v("adapter.name") == "none" or v("method.name") not in ("ptq", "quadapter"):
        return
    names, arch = v("adapter.sites"), FAMILIES[v("model.arch")]
    problem = list_problem(names, arch.regions)
    if problem:
        note = f" ({arch.regions_note})" if arch.regions_note else ""
        p.invalid("adapter.sites", names, f"a non-empty list of distinct {arch.family} scale regions "
                  f"from {arch.describe_regions()}{note}", detail=problem)
        return
    try:
        quantized = _quantized_sites(v)
    except _Skip:
        return
    for name in names:
        missing = [c for c in arch.regions[name].consumers if c not in quantized]
        if missing:
            p.add("adapter.sites", f"adapter.sites has {name}, whose consumer(s) {', '.join(missing)} "
                                   f"are not in quantizer.sites={show(quantized)}: add them to "
                                   f"quantizer.sites or drop {name}")


@relation
def linear_producers_need_fixed_per_channel_weight_ranges(v: View, p: Problems) -> None:
    """α folds into a quantized linear producer's output channels only if each channel's range
    can follow it (``adapters.scaling.output_range``)."""
    if v("adapter.name") == "none" or v("bits.weight") is None:
        return
    arch, quantized = FAMILIES[v("model.arch")], _quantized_sites(v)
    linear = [n for n in v("adapter.sites") if n in arch.regions
              and isinstance(arch.regions[n].producer, LinearOutput)
              and arch.regions[n].producer.site in quantized]
    if not linear:
        return
    granularity, learnable = v("quantizer.weight.granularity"), v("quantizer.learnable")
    if granularity not in ("per_channel", "per_group") or learnable != "none":
        names = ", ".join(f"{n} ({arch.regions[n].doc})" for n in linear)
        p.add("adapter.sites", f"adapter.sites has {names}, which folds exactly into a quantized "
                               "linear producer only with per-channel or per-group fixed weight ranges; got "
                               f"quantizer.weight.granularity={show(granularity)}, quantizer.learnable="
                               f"{show(learnable)}: use quantizer=minmax (or mse, percentile) or drop "
                               f"{', '.join(linear)}")


@relation
def level_weights_take_their_scale_from_the_weights(v: View, p: Problems) -> None:
    """Ternary/binary weights: α = a mean of |W| per tensor or channel, nothing to learn or group."""
    levels = v("bits.weight")
    if levels not in WEIGHT_LEVELS or v("method.name") not in QUANTIZING_METHODS:
        return
    if v("quantizer.name") == "none":
        return  # quantizing_methods_need_bits_and_ranges reports it
    learnable, granularity = v("quantizer.learnable"), v("quantizer.weight.granularity")
    if learnable != "none":
        p.add("quantizer.learnable", f"bits.weight={levels} takes its scale from the weights (mean "
                                     f"|W|), not from a learnable range (quantizer.learnable="
                                     f"{show(learnable)}): use quantizer=minmax or "
                                     "quantizer.learnable=none")
    if granularity not in LEVEL_GRANULARITIES:
        p.add("quantizer.weight.granularity",
              f"quantizer.weight.granularity={show(granularity)} with bits.weight={levels}: "
              f"{levels} weights take per_tensor or per_channel (one α per tensor or output channel)")


@relation
def progressive_ends_at_the_runs_bits(v: View, p: Problems) -> None:
    """The run is labelled, tabled and compared by ``bits``: the model it scores is the last stage's."""
    if v("method.name") != "progressive":
        return
    last = v("method.stages")[-1]
    weight, act = v("bits.weight"), v("bits.act")
    if (last.get("weight"), last.get("act")) != (weight, act):
        p.add("method.stages", f"method.stages ends at weight={show(last.get('weight'))}, act="
                               f"{show(last.get('act'))} but the run's bits are {v('bits.name')} "
                               f"(weight={show(weight)}, act={show(act)}): the run is scored and "
                               "labelled by its last stage; choose the matching bits= preset or end "
                               "the stages there")


@relation
def distillation_fits_the_method_and_task(v: View, p: Problems) -> None:
    """``distill=kd`` trains a GLUE student on an FP teacher's outputs (a training method on GLUE,
    the teacher a saved run), or a compressed LM student on the model it was made from
    (``method=kd_pretrain``, which holds its own teacher)."""
    if v("distill.name") == "none":
        return
    method, task = v("method.name"), v("task.name")
    if method in OWN_TEACHER_METHODS:
        if v("distill.teacher") is not None:
            p.add("distill.teacher", f"method={method} distils from the model it compresses, not from "
                                     f"distill.teacher={v('distill.teacher')}: set distill.teacher=null")
    elif task != "glue" or method not in DISTILLING_METHODS:
        p.add("distill", f"distill=kd with task={task} method={method}: distillation trains a GLUE "
                         f"model on an FP teacher's outputs, so it needs task=glue and one of the "
                         f"methods that train ({', '.join(DISTILLING_METHODS)}), or method=kd_pretrain "
                         "(an LM student from its own teacher); use distill=none")
    elif v("distill.teacher") is None:
        p.add("distill.teacher", "distill=kd needs distill.teacher: the run dir of a completed "
                                 "method=fp task=glue run saved with task.finetune.save=true")


@relation
def kd_pretrain_quantizes_nothing(v: View, p: Problems) -> None:
    if v("method.name") == "kd_pretrain" and (v("bits.weight") is not None or v("bits.act") is not None):
        p.add("bits.name", f"method=kd_pretrain trains a compressed FP student, it quantizes nothing (bits="
                           f"{v('bits.name')}): use bits=fp, then quantize the saved student in another run "
                           "(model.name_or_path=<run dir>/student)")


@relation
def kd_pretrain_on_pretraining_data_needs_a_model_quadapter_pretrained(v: View, p: Problems) -> None:
    if (v("method.name") == "kd_pretrain" and v("method.data") == "pretraining"
            and (v("model.name_or_path") is not None or v("model.pretrain") is None)):
        p.add("method.data", f"method.data=pretraining trains on the loaded model's own pretraining domains, but "
                             f"model={v('model.name')} was not pretrained by quadapter (it needs model.pretrain and "
                             "model.name_or_path=null: model=tiny or proxy); use method.data=dataset")


@relation
def a_loaded_finetuning_needs_a_method_that_starts_from_it(v: View, p: Problems) -> None:
    """``task.finetune.load`` replaces the FP fine-tuning that ptq and progressive start from."""
    if v("task.name") != "glue" or v("task.finetune.load") is None:
        return
    method = v("method.name")
    start = v("method.start") if method == "progressive" else None  # only progressive has a start
    if method != "fp" and not loads_finetuning(method, start):  # fp ignores it: fp makes one
        p.add("task.finetune.load", f"task.finetune.load applies to the methods that start from the FP "
                                    f"fine-tuned model (ptq, progressive with method.start=finetuned), "
                                    f"not method={method}; set task.finetune.load=null")


@relation
def augmented_stages_need_an_augmenter(v: View, p: Problems) -> None:
    if v("method.name") != "progressive":
        return
    wanted = [k for k, stage in enumerate(v("method.stages")) if stage.get("augment")]
    if not wanted:
        return
    augment = v("task.augment") if v("task.name") == "glue" else None
    if augment is None or augment.get("name") == "none":
        p.add("method.stages", f"method.stages {wanted} ask for augmented data (augment: true) but "
                               f"task={v('task.name')} has no augmenter: on task=glue set "
                               "task.augment.name=token_mask, or set augment: false")


@relation
def group_size_goes_with_per_group(v: View, p: Problems) -> None:
    if v("quantizer.name") == "none":
        return
    granularity, group_size = v("quantizer.weight.granularity"), v("quantizer.weight.group_size")
    if granularity == "per_group" and group_size is None:
        p.add("quantizer.weight.group_size", "quantizer.weight.granularity=per_group needs "
                                             "quantizer.weight.group_size (input channels per range, "
                                             "e.g. 32, 64 or 128)")
    elif granularity != "per_group" and group_size is not None:
        p.add("quantizer.weight.group_size", f"quantizer.weight.group_size={show(group_size)} applies "
                                             "to granularity=per_group only; set "
                                             "quantizer.weight.granularity=per_group or group_size=null")


@relation
def smoothquant_needs_activation_ranges(v: View, p: Problems) -> None:
    adapter = v("adapter.name")
    if adapter == "smoothquant" or (adapter == "quadapter" and v("adapter.init") == "smoothquant"):
        if v("bits.act") is None:
            which = "adapter=smoothquant" if adapter == "smoothquant" else "adapter.init=smoothquant"
            p.add("bits.act", f"{which} needs quantized activations (bits.act=null): SmoothQuant's α "
                              "comes from the calibrated activation ranges; choose bits with an "
                              "activation bit-width, e.g. bits=w8a8")


@relation
def quadapter_range_learning_needs_learnable_ranges(v: View, p: Problems) -> None:
    if v("method.name") != "quadapter":
        return
    learn, learnable = v("method.learn_ranges"), v("quantizer.learnable")
    if learn and learnable == "none":
        p.add("method.learn_ranges", "method.learn_ranges=true needs learnable ranges, but "
                                     "quantizer.learnable='none': use quantizer=learned (or set "
                                     "quantizer.learnable)")
    elif learn and v("bits.act") is None:
        p.add("method.learn_ranges", "method.learn_ranges=true trains the activation ranges, but "
                                     "activations are not quantized (bits.act=null)")
    elif learn and v("quantizer.act.granularity") == "per_token":
        p.add("method.learn_ranges", "method.learn_ranges=true has nothing to train: per_token "
                                     "activation ranges are dynamic (quantizer.act.granularity)")
    elif not learn and learnable != "none":
        p.add("quantizer.learnable", f"quantizer.learnable={show(learnable)} with method=quadapter "
                                     "and method.learn_ranges=false: the ranges would be learnable "
                                     "parameters that never train; set method.learn_ranges=true, "
                                     "or use fixed ranges (quantizer=minmax)")


@relation
def qat_learnable_ranges_need_static_activation_ranges(v: View, p: Problems) -> None:
    learnable = v("quantizer.learnable")
    if (v("method.name") == "qat" and learnable not in (None, "none") and v("bits.act") is not None
            and v("quantizer.act.granularity") == "per_token"):
        p.add("quantizer.learnable",
              f"method=qat with quantizer.learnable={show(learnable)} and per_token activations: "
              "per-token activation ranges are recomputed on every token, so there are none to "
              "learn (only the weights' would); use quantizer.act.granularity=per_tensor, or fixed "
              "ranges (quantizer.learnable=none)")


# ---- model, eval -------------------------------------------------------------------------------

def _pretrained_here(v: View) -> Mapping[str, Any] | None:
    """The pretraining spec when quadapter pretrains the model itself, else None."""
    loaded = v("model.name_or_path") is not None or v("model.package") is not None
    return None if loaded else v("model.pretrain")


@relation
def pretrained_model_needs_a_spec(v: View, p: Problems) -> None:
    if v("model.name_or_path") is None and v("model.package") is None and v("model.pretrain") is None:
        p.add("model.pretrain", "model.name_or_path=null needs model.pretrain (the spec of the model "
                                "quadapter pretrains) or model.package: set model.name_or_path to a hub "
                                "name or a directory, or use model=tiny")


@relation
def the_model_head_fits_the_task(v: View, p: Problems) -> None:
    task, arch = v("task.name"), FAMILIES[v("model.arch")]
    if TASK_HEADS[task] not in arch.supported_heads():
        fitting = ", ".join(families_with_head(TASK_HEADS[task]))
        p.invalid("model.arch", v("model.arch"), f"a family with a {TASK_HEADS[task]} head for "
                  f"task={task} ({fitting}): {arch.family} models have a {arch.head} head; pick "
                  f"another model= (or task=)")


def _lm_only(v: View) -> None:
    """Skip a check of language-modelling keys on another task."""
    if v("task.name") != "lm":
        raise _Skip


# methods that need the LM task, and why (a config check, as DESIGN §2 asks of such methods)
LM_ONLY_METHODS = {
    "quadapter": "its block-wise phase reconstructs decoder blocks on token blocks and its scale "
                 "regions fold into pre-norm producers (encoders offer only v_out); use method=fp, "
                 "ptq or qat on GLUE",
    "gptq": "it quantizes a pretrained decoder block by block on token blocks of the calibration "
            "split; on GLUE the head is new, so quantize after fine-tuning: method=ptq",
    "blockptq": "it reconstructs a pretrained decoder's blocks on token blocks of the calibration "
                "split; on GLUE the head is new, so quantize after fine-tuning: method=ptq",
    "kd_pretrain": "it pretrains a compressed causal LM on token blocks (its GLUE fine-tuning is a "
                   "later run from the saved student)"}


GLUE_ONLY_METHODS = {
    "prequant": "it fine-tunes a quantized pretrained encoder's outlier columns and new task head "
                "on a GLUE task"}


@relation
def methods_fit_the_task(v: View, p: Problems) -> None:
    task, method = v("task.name"), v("method.name")
    if task != "lm" and method in LM_ONLY_METHODS:
        p.add(["task.name", "method.name"], f"method={method} needs task=lm: {LM_ONLY_METHODS[method]}")
    if task != "glue" and method in GLUE_ONLY_METHODS:
        p.add(["task.name", "method.name"], f"method={method} needs task=glue: "
                                            f"{GLUE_ONLY_METHODS[method]}")
    if task != "lm" and v("adapter.name") != "none":
        p.add(["task.name", "adapter.name"], f"adapter={v('adapter.name')} is not available with "
              f"task={task}: its scales are calibrated and trained on token blocks; use adapter=none")
    for key in ("method.train.train_tokens", "method.e2e.train_tokens"):
        try:
            tokens = v(key)
        except _Skip:
            continue
        if task != "lm" and tokens is not None:
            p.add(key, f"{key}={tokens} limits an LM fine-tuning split by tokens; with task={task} "
                       "set it to null")


WEIGHT_ONLY_METHODS = {"gptq": "fixes the ranges it quantizes to: use quantizer=minmax, mse or percentile "
                                "(learnable=none)",
                       "blockptq": None}  # blockptq: learnable ranges are what method.learn=[scales] trains


@relation
def weight_only_methods_quantize_weights_only(v: View, p: Problems) -> None:
    """GPTQ and block reconstruction place uniform weights on a grid; activations stay FP."""
    method = v("method.name")
    if method not in WEIGHT_ONLY_METHODS:
        return
    if v("bits.act") is not None:
        p.add("bits.act", f"method={method} quantizes weights only, not activations (bits.act={show(v('bits.act'))}): "
                          "choose a weight-only preset (bits=w4, bits=w3, bits=w2) or set bits.act=null")
    if v("bits.weight") in WEIGHT_LEVELS:
        p.add("bits.weight", f"method={method} places weights on a uniform grid, not bits.weight={v('bits.weight')}: "
                             "choose 2..8 bits (ternary/binary weights: method=qat or method=progressive)")
    fixed = WEIGHT_ONLY_METHODS[method]
    if fixed and v("quantizer.name") != "none" and v("quantizer.learnable") != "none":
        p.add("quantizer.learnable", f"method={method} {fixed}")


@relation
def blockptq_learns_something_coherent(v: View, p: Problems) -> None:
    if v("method.name") != "blockptq":
        return
    learn = list(v("method.learn") or [])
    if "rounding" in learn and "weights" in learn:
        p.add("method.learn", "method.learn=[rounding, weights] learns the weights' rounding and the weights "
                              "themselves at once: choose one (e.g. [rounding] or [weights, scales])")
    if "scales" in learn and v("quantizer.name") != "none" and v("quantizer.learnable") == "none":
        p.add(["method.learn", "quantizer.learnable"], "method.learn includes scales but the weight ranges are "
              "fixed (quantizer.learnable=none): set quantizer.learnable=beta_gamma (or min_max, scale_offset)")


@relation
def glue_calibrates_on_train(v: View, p: Problems) -> None:
    if v("task.name") == "glue" and v("method.name") in ("ptq", "qat") \
            and v("quantizer.calibration.split") != "train":
        p.invalid("quantizer.calibration.split", v("quantizer.calibration.split"),
                  "train with task=glue (dev is the held-out set)")


@relation
def pretraining_builds_a_gpt2(v: View, p: Problems) -> None:
    if _pretrained_here(v) is not None and v("model.arch") != "gpt2":
        p.invalid("model.arch", v("model.arch"), "gpt2 when quadapter pretrains the model "
                  "(model.pretrain builds a GPT-2)")


@relation
def pretrain_spec_is_consistent(v: View, p: Problems) -> None:
    spec = _pretrained_here(v)
    if spec is None:
        return
    if spec["n_embd"] % spec["n_head"]:
        p.add("model.pretrain.n_head", f"model.pretrain.n_head={spec['n_head']} does not divide "
                                       f"model.pretrain.n_embd={spec['n_embd']}: attention heads "
                                       "split the hidden size evenly")
    corpora = spec.get("corpora") or {}
    domains = list(spec["domains"])
    unknown = [d for d in domains if d not in EMBEDDED_DOMAINS and d not in corpora]
    if unknown or not domains or len(set(domains)) != len(domains):
        p.invalid("model.pretrain.domains", domains,
                  f"a non-empty list of distinct embedded domains ({', '.join(EMBEDDED_DOMAINS)}) "
                  f"or keys of model.pretrain.corpora ({', '.join(corpora) or 'none'})",
                  detail=f"unknown: {', '.join(map(repr, unknown))}" if unknown else None)


@relation
def outlier_channels_fit_the_model(v: View, p: Problems) -> None:
    profile, spec = v("model.outlier_profile"), _pretrained_here(v)
    if profile is not None and spec is not None and profile["channels"] > spec["n_embd"]:
        p.invalid("model.outlier_profile.channels", profile["channels"],
                  f"an integer in 1..{spec['n_embd']} (model.pretrain.n_embd)")


@relation
def eval_windows_fit(v: View, p: Problems) -> None:
    _lm_only(v)
    context, stride = v("eval.context"), v("eval.stride")
    if context is not None and stride is not None and stride > context:
        p.add("eval.stride", f"eval.stride={stride} is larger than eval.context={context}: tokens "
                             "between windows would never be scored; use a stride <= context")
    spec = _pretrained_here(v)
    if context is not None and spec is not None and context > spec["block_size"]:
        p.add("eval.context", f"eval.context={context} is larger than the model's maximum context "
                              f"(model.pretrain.block_size={spec['block_size']}); use "
                              f"eval.context<={spec['block_size']} or null")


# ---- datasets ----------------------------------------------------------------------------------

def _datasets(v: View) -> dict[str, Mapping[str, Any]]:
    """Every dataset config of the run by its key: the fine-tuning set and the held-out sets."""
    out = {"dataset": v("dataset")}
    for key, spec in v("eval.sets").items():
        out[f"eval.sets.{key}"] = spec
    return out


def _source(spec: Mapping[str, Any], data_dir: str | None) -> str:
    """As data.corpora.resolve_source: auto is embedded, else the local mirror if set, else the hub."""
    if spec["source"] != "auto":
        return spec["source"]
    if spec["embedded"]:
        return "embedded"
    return "local" if data_dir and spec["local"] else "hub"


def _splits(spec: Mapping[str, Any], data_dir: str | None) -> tuple[str, ...] | None:
    """The splits a dataset has where that is known without loading it (not on the hub)."""
    source = _source(spec, data_dir)
    if source == "embedded" and spec["embedded"]:
        return EMBEDDED_SPLITS
    if source == "local" and spec["local"]:
        return tuple(spec["local"]["files"])
    return None


def _check_source(key: str, spec: Mapping[str, Any], data_dir: str | None, p: Problems) -> bool:
    source, name = spec["source"], spec["name"]
    where = {"embedded": "it is not an embedded corpus", "local": "it has no local layout",
             "hub": "it has no hub location"}
    resolved = _source(spec, data_dir)
    if not spec[resolved]:
        other = [s for s in ("embedded", "local", "hub") if spec[s]]
        fix = f"use {key}.source={' or '.join(other)}" if other else f"give {key}.{resolved}"
        if source == "auto" and spec["local"]:
            fix = "set QUADAPTER_DATA_DIR (or paths.data_dir) to a local mirror"
        p.add(f"{key}.source", f"{key}.source={show(source)} is invalid for dataset {name!r}: "
                               f"{where[resolved]} ({key}.{resolved} is null); {fix}")
        return False
    if resolved == "local" and not data_dir:
        p.add(f"{key}.source", f"{key}.source='local' needs a data dir for dataset {name!r}: set "
                               "QUADAPTER_DATA_DIR or paths.data_dir to a folder laid out like "
                               "shared/data")
        return False
    return True


def _check_split(what: str, split: str, key: str, spec: Mapping[str, Any], data_dir: str | None,
                 p: Problems) -> None:
    splits = _splits(spec, data_dir)
    if splits is not None and split not in splits:
        p.add(what, f"{what}={show(split)} is invalid for dataset {spec['name']!r} ({key}): it has "
                    f"the splits {', '.join(splits)}")


@relation
def datasets_can_be_loaded(v: View, p: Problems) -> None:
    _lm_only(v)
    data_dir = v("paths.data_dir")
    for key, spec in _datasets(v).items():
        if _check_source(key, spec, data_dir, p):
            try:
                _check_split("eval.split", v("eval.split"), key, spec, data_dir, p)
            except _Skip:
                pass


@relation
def fine_tuning_set_has_the_splits_the_method_reads(v: View, p: Problems) -> None:
    _lm_only(v)
    method, spec, data_dir = v("method.name"), v("dataset"), v("paths.data_dir")
    if "dataset.source" in p.bad:
        return
    if method in QUANTIZING_METHODS:
        _check_split("quantizer.calibration.split", v("quantizer.calibration.split"), "dataset",
                     spec, data_dir, p)
    trains = method == "qat" or (method == "quadapter" and v("method.e2e.enabled"))
    splits = _splits(spec, data_dir)
    if trains and splits is not None and "train" not in splits:
        p.add("dataset", f"method={method} trains on the train split of dataset {spec['name']!r}, "
                         f"which has only {', '.join(splits)}: choose a fine-tuning dataset with a "
                         "train split (dataset=...)")


@relation
def pretraining_corpora_can_be_loaded(v: View, p: Problems) -> None:
    spec = _pretrained_here(v)
    if spec is None:
        return
    data_dir = spec.get("data_dir")
    for name, corpus in (spec.get("corpora") or {}).items():
        key = f"model.pretrain.corpora.{name}"
        if _check_source(key, corpus, data_dir, p):
            _check_split(f"{key}.split", corpus["split"], key, corpus, data_dir, p)


@relation
def held_out_sets_are_keyed_by_name(v: View, p: Problems) -> None:
    """``eval_sets`` keys sets by their name, so a mismatch would drop or rename a set silently."""
    first: dict[str, tuple[str, str]] = {}
    for key, spec in _datasets(v).items():
        name = spec["name"]
        if key.startswith("eval.sets.") and key.rpartition(".")[2] != name:
            p.add(f"{key}.name", f"{key} is dataset {name!r} ({key}.name): held-out sets are keyed "
                                 f"by their name; add it as +dataset@eval.sets.{name}=<dataset>, or "
                                 f"set {key}.name={key.rpartition('.')[2]}")
        elif name in first and first[name][1] != spec["variant"]:
            p.add(f"{key}.variant", f"{key} and {first[name][0]} are both named {name!r} but are "
                                    f"different data ({show(spec['variant'])} vs "
                                    f"{show(first[name][1])}): only {first[name][0]} would be "
                                    "scored; rename one (its .name)")
        first.setdefault(name, (key, spec["variant"]))
