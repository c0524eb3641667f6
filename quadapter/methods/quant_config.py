"""Quantization settings read from the ``bits`` and ``quantizer`` groups, validated up front.

Every quantizing method starts here. ``quadapter.schema.validate`` checks the same keys first (with
every other key, in one message); the checks here guard the code that builds the quantizers, and
raise ``ConfigError`` in the schema's wording: the key, the bad value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from quadapter.errors import ConfigError
from quadapter.models.arch import family
from quadapter.models.sites import check_site_names
from quadapter.quant import ESTIMATORS, LEARNABLE
from quadapter.quant.levels import LEVEL_GRANULARITIES, LEVELS, TWN_THRESHOLD
from quadapter.quant.sim import QuantizerConfig
from quadapter.schema.fields import show
from quadapter.schema.groups import ACT_GRANULARITIES, WEIGHT_GRANULARITIES


@dataclass(frozen=True)
class QuantSettings:
    weight: QuantizerConfig | None  # None: weights stay in full precision; bits may be ternary/binary
    act: QuantizerConfig | None  # None: activations stay in full precision
    sites: list[str]  # resolved against the model's family (quantizer.sites=null: every block linear)
    calibration_split: str
    calibration_blocks: int
    calibration_batch_size: int
    outlier_top_channels: int

    def to_dict(self) -> dict[str, Any]:
        """What results.json records: sites, bits, granularity, symmetry, estimator, calibration."""
        sides = {"weight": self.weight, "act": self.act}
        return {
            "sites": self.sites,
            "bits": {side: None if c is None else c.bits for side, c in sides.items()},
            **{side: None if c is None else c.to_dict() for side, c in sides.items()},
            "calibration": {"split": self.calibration_split, "blocks": self.calibration_blocks,
                            "batch_size": self.calibration_batch_size,
                            "outlier_top_channels": self.outlier_top_channels},
        }


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config error: {key}={show(value)} is invalid: expected {allowed}")


def _bits(cfg: DictConfig, side: str) -> int | str | None:
    value = cfg.bits.get(side)
    if side == "weight" and value in LEVELS:
        return value
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 2 <= value <= 16):
        levels = f", {' or '.join(LEVELS)}" if side == "weight" else \
            " (ternary and binary are weight quantizers)"
        raise _fail(f"bits.{side}", value, f"an integer in 2..16{levels} or null (null = not quantized)")
    return value


def _choice(q: Mapping, key: str, allowed: tuple[str, ...]) -> str:
    value = OmegaConf.select(q, key)
    if value not in allowed:
        raise _fail(f"quantizer.{key}", value, f"one of {', '.join(allowed)}")
    return value


def _flag(q: Mapping, key: str) -> bool:
    value = OmegaConf.select(q, key)
    if not isinstance(value, bool):
        raise _fail(f"quantizer.{key}", value, "true or false")
    return value


def _positive(q: Mapping, key: str) -> int:
    value = OmegaConf.select(q, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"quantizer.{key}", value, "an integer >= 1")
    return value


def _level_weight(q: Mapping, levels: str, learnable: str) -> QuantizerConfig:
    """Ternary/binary weights: α (and Δ) come from the weight itself, so nothing is learned."""
    if learnable != "none":
        raise ConfigError(f"config error: bits.weight={levels} takes its scale from the weights "
                          f"(mean |W|), not from a learnable range (quantizer.learnable="
                          f"{show(learnable)}): use quantizer=minmax or quantizer.learnable=none")
    granularity = OmegaConf.select(q, "weight.granularity")
    if granularity not in LEVEL_GRANULARITIES:
        raise _fail("quantizer.weight.granularity", granularity,
                    f"per_tensor or per_channel with bits.weight={levels} (one α per tensor or "
                    "per output channel)")
    threshold = OmegaConf.select(q, "weight.ternary_threshold", default=TWN_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise _fail("quantizer.weight.ternary_threshold", threshold, "a number >= 0 (TWN: 0.7)")
    return QuantizerConfig(levels, True, granularity, threshold=float(threshold))


def quant_settings(cfg: DictConfig, method: str) -> QuantSettings:
    """The run's quantization settings; ``method`` names the caller in errors."""
    weight_bits, act_bits = _bits(cfg, "weight"), _bits(cfg, "act")
    if weight_bits is None and act_bits is None:
        given = "bits=fp" if cfg.bits.name == "fp" else "bits.weight=null and bits.act=null"
        raise ConfigError(f"config error: method={method} with {given} quantizes nothing: choose "
                          "quantized bits, e.g. bits=w8a8 or bits=w4a8")
    q = cfg.quantizer
    if q.name == "none" or "estimator" not in q:
        raise ConfigError(f"config error: method={method} with quantizer={q.name} has no "
                          "quantization ranges: choose quantizer=minmax, quantizer=percentile, "
                          "quantizer=mse or quantizer=learned")
    estimator = _choice(q, "estimator", tuple(ESTIMATORS))
    estimator_kw = q.get("estimator_kw")
    if estimator_kw is not None and not OmegaConf.is_dict(estimator_kw):
        raise _fail("quantizer.estimator_kw", estimator_kw, "a mapping of the estimator's options")
    estimator_kw = OmegaConf.to_container(estimator_kw, resolve=True) if estimator_kw else {}
    learnable = _choice(q, "learnable", LEARNABLE)
    sigmoid = _flag(q, "sigmoid")
    if sigmoid and learnable != "beta_gamma":
        raise _fail("quantizer.sigmoid", sigmoid, "false unless quantizer.learnable=beta_gamma")
    common = dict(estimator=estimator, estimator_kw=estimator_kw, learnable=learnable,
                  sigmoid=sigmoid)
    weight = act = None
    if weight_bits in LEVELS:
        weight = _level_weight(q, weight_bits, learnable)
    elif weight_bits is not None:
        granularity = _choice(q, "weight.granularity", WEIGHT_GRANULARITIES)
        group_size = OmegaConf.select(q, "weight.group_size")
        if (granularity == "per_group") != (group_size is not None):
            raise _fail("quantizer.weight.group_size", group_size,
                        "a positive integer with granularity=per_group, else null")
        if group_size is not None:
            group_size = _positive(q, "weight.group_size")
        weight = QuantizerConfig(weight_bits, _flag(q, "weight.symmetric"), granularity,
                                 group_size=group_size, **common)
    if act_bits is not None:
        granularity = _choice(q, "act.granularity", ACT_GRANULARITIES)
        if granularity == "per_token":  # dynamic ranges: nothing to learn on the activation side
            common.update(learnable="none", sigmoid=False)
        act = QuantizerConfig(act_bits, _flag(q, "act.symmetric"), granularity, **common)
    for side, config in (("weight", weight), ("act", act)):
        try:  # the estimator's own knobs (percentile bounds, unknown names) are checked here
            if config is not None:
                config.build(axis=0)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config error: quantizer.estimator_kw={show(estimator_kw)} is "
                              f"invalid for the {side} quantizer: {e}") from e
    try:
        sites = check_site_names(None if q.sites is None else list(q.sites), family(cfg.model.arch))
    except ValueError as e:
        raise ConfigError(f"config error: {e}") from e
    split = OmegaConf.select(q, "calibration.split")
    if not isinstance(split, str) or not split:
        raise _fail("quantizer.calibration.split", split, "a split name such as train")
    return QuantSettings(weight, act, sites, split, _positive(q, "calibration.blocks"),
                         _positive(q, "calibration.batch_size"),
                         _positive(q, "calibration.outlier_top_channels"))
