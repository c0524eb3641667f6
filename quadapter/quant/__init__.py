"""Quantization core: fake quantizers (uniform; ternary and binary weights), range estimators,
learnable ranges, QuantSim. No model
knowledge: callers name the sites (``quadapter.models.sites`` for GPT-2)."""

from quadapter.quant.diagnostics import OutlierStats
from quadapter.quant.functional import (
    fake_quant,
    fake_quant_fixed,
    grad_scale,
    qparams_from_range,
    quant_range,
    round_ste,
)
from quadapter.quant.learnable import (
    PARAMETERIZATIONS,
    BetaGammaRange,
    MinMaxRange,
    RangeParameterization,
    ScaleOffsetRange,
    make_parameterization,
)
from quadapter.quant.levels import LEVELS, LevelQuantizer, binarize, ternarize
from quadapter.quant.quantizer import GRANULARITIES, LEARNABLE, FakeQuantizer
from quadapter.quant.ranges import (
    ESTIMATORS,
    MinMaxEstimator,
    MSEEstimator,
    PercentileEstimator,
    RangeEstimator,
    RunningMinMaxEstimator,
    make_estimator,
)
from quadapter.quant.sim import (
    LayerSite,
    OutputSite,
    QuantizedLayer,
    QuantizerConfig,
    QuantSim,
    linear_forward,
)

__all__ = [
    "ESTIMATORS",
    "GRANULARITIES",
    "LEARNABLE",
    "LEVELS",
    "PARAMETERIZATIONS",
    "BetaGammaRange",
    "FakeQuantizer",
    "LayerSite",
    "LevelQuantizer",
    "MSEEstimator",
    "MinMaxEstimator",
    "MinMaxRange",
    "OutlierStats",
    "OutputSite",
    "PercentileEstimator",
    "QuantSim",
    "QuantizedLayer",
    "QuantizerConfig",
    "RangeEstimator",
    "RangeParameterization",
    "RunningMinMaxEstimator",
    "ScaleOffsetRange",
    "binarize",
    "fake_quant",
    "fake_quant_fixed",
    "grad_scale",
    "linear_forward",
    "make_estimator",
    "make_parameterization",
    "qparams_from_range",
    "quant_range",
    "round_ste",
    "ternarize",
]
