"""Quantization core: fake quantizers, range estimators, learnable ranges. No model knowledge."""

from quadapter.quant.functional import (
    fake_quant,
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

__all__ = [
    "ESTIMATORS",
    "GRANULARITIES",
    "LEARNABLE",
    "PARAMETERIZATIONS",
    "BetaGammaRange",
    "FakeQuantizer",
    "MSEEstimator",
    "MinMaxEstimator",
    "MinMaxRange",
    "PercentileEstimator",
    "RangeEstimator",
    "RangeParameterization",
    "RunningMinMaxEstimator",
    "ScaleOffsetRange",
    "fake_quant",
    "grad_scale",
    "make_estimator",
    "make_parameterization",
    "qparams_from_range",
    "quant_range",
    "round_ste",
]
