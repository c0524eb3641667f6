"""FakeQuantizer: uniform affine quantize-dequantize with a straight-through estimator."""

from typing import Any

import torch
from torch import Tensor, nn

from quadapter.quant.functional import (
    check_bits,
    check_choice,
    fake_quant,
    fake_quant_fixed,
    fake_quant_rounded,
    qparams_from_range,
    quant_range,
)
from quadapter.quant.learnable import (
    PARAMETERIZATIONS,
    RangeParameterization,
    make_parameterization,
)
from quadapter.quant.ranges import ESTIMATORS, make_estimator

GRANULARITIES = ("per_tensor", "per_channel", "per_group", "per_token")
LEARNABLE = ("none", *PARAMETERIZATIONS)


class FakeQuantizer(nn.Module):
    """x̂ = s·(clamp(round(x/s) + z, qmin, qmax) − z), STE gradient (zero outside the grid).

    Lifecycle: ``calibrate()`` (forward observes, returns x), ``freeze()`` (qparams from the
    observed range, learnable ranges initialized from them), then quantize. Fixed ranges run
    ``fake_quant_fixed`` (torch's fused kernels, or a faster bit-identical chain on the CPU);
    learnable ones the bit-identical pure-torch formula, so that gradients also reach the range.
    ``per_token`` is dynamic: a range per row of the last dim, computed on the fly and treated as
    a constant by autograd (no state, no calibration). ``per_group`` (weights only, the standard of
    weight-only LLM quantization) gives every run of ``group_size`` consecutive input channels of
    each output channel its own range: the weight is viewed as [out·in/group_size, group_size] and
    quantized per row, so every range path (estimators, learnable ranges, the CPU fast path) is the
    per-channel one.

    Args:
        bits: 2..16. symmetric: signed grid with z = 0, else unsigned with an integer z.
        granularity: ``per_tensor``, ``per_channel`` (needs ``axis``: 0 for an nn.Linear weight
            [out, in], 1 for an HF Conv1D weight [in, out]), ``per_group`` (needs ``axis`` as
            per_channel and ``group_size``, which must divide the input dimension) or ``per_token``.
        estimator, estimator_kw: range estimator name and options (see ``ranges``).
        learnable: ``none``, ``scale_offset``, ``min_max`` or ``beta_gamma`` (+ ``sigmoid``).
    """

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        granularity: str = "per_tensor",
        axis: int | None = None,
        estimator: str = "minmax",
        estimator_kw: dict[str, Any] | None = None,
        learnable: str = "none",
        sigmoid: bool = False,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        self.parameterization = check_choice("learnable range", learnable, LEARNABLE)
        if (granularity in ("per_channel", "per_group")) != (axis is not None):
            raise ValueError(f"axis is for per_channel and per_group only and required there; got {axis!r}")
        if (granularity == "per_group") != (group_size is not None):
            raise ValueError(f"group_size is for per_group only and required there; got {group_size!r}")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size < 1):
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        if granularity == "per_token" and learnable != "none":
            raise ValueError(f"per_token ranges are dynamic, not learnable; got {learnable!r}")
        if sigmoid and learnable != "beta_gamma":
            raise ValueError(f"sigmoid applies to learnable='beta_gamma' only, not {learnable!r}")
        self.symmetric, self.axis, self.sigmoid = symmetric, axis, sigmoid
        self.group_size = group_size
        self.qmin, self.qmax = quant_range(bits, symmetric)
        self.enabled, self.calibrating = True, False
        self.estimator_name = check_choice("range estimator", estimator, tuple(ESTIMATORS))
        self.estimator = None
        if granularity != "per_token":
            grid = {"bits": bits, "symmetric": symmetric} if ESTIMATORS[estimator].needs_grid else {}
            row_axis = 0 if granularity == "per_group" else axis  # groups are the rows of a 2-D view
            self.estimator = make_estimator(estimator, axis=row_axis, **grid, **(estimator_kw or {}))
        # Empty until calibrated: 0-dim per tensor, [channels] per channel.
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))
        self.learned_range: RangeParameterization | None = None
        self.register_module("rounding", None)  # a learned rounding (AdaRound) replacing round-to-nearest

    # -- modes ------------------------------------------------------------------------------
    def enable(self, enabled: bool = True) -> "FakeQuantizer":
        self.enabled = enabled
        return self

    def disable(self) -> "FakeQuantizer":
        return self.enable(False)

    def calibrate(self, calibrating: bool = True) -> "FakeQuantizer":
        """Start (or stop) observing ranges; forward returns its input meanwhile."""
        if calibrating and self.estimator is not None:
            self.estimator.reset()
        self.calibrating = calibrating
        return self

    def freeze(self) -> "FakeQuantizer":
        """End calibration: set qparams from the observed range (a no-op for per_token)."""
        self.calibrating = False
        if self.estimator is not None:
            self.set_range(*self.estimator.range())
            self.estimator.reset()  # drop the observed statistics and samples
        return self

    @torch.no_grad()
    def set_range(self, lo: Tensor | float, hi: Tensor | float) -> None:
        """Set the clipping range directly. Re-creates learnable ranges: build optimizers after."""
        if self.granularity == "per_token":
            raise RuntimeError("per_token quantizers have no stored range")
        lo, hi = (
            torch.as_tensor(t, dtype=torch.float32, device=self.scale.device).reshape(self._range_shape())
            for t in (lo, hi)
        )
        scale, zero_point = qparams_from_range(lo, hi, self.qmin, self.qmax, self.symmetric)
        self.scale, self.zero_point = scale, zero_point.to(torch.int32)
        if self.parameterization != "none":
            self.learned_range = make_parameterization(
                self.parameterization, lo, hi, self.qmin, self.qmax, self.symmetric, self.sigmoid
            )

    def _range_shape(self) -> tuple[int, ...]:
        """Stored qparams' shape: one per channel or group ([n]), else one (0-dim)."""
        return (-1,) if self.granularity in ("per_channel", "per_group") else ()

    def set_rounding(self, rounding: nn.Module | None) -> None:
        """Round with ``rounding`` instead of to nearest (``None``: back to nearest).

        ``rounding`` maps the grid coordinates ``x·(1/s)`` (``grid_coordinates``' layout) to
        integer-valued (or, while it learns, in-between) values; clamping, zero point and scale
        are applied around it as usual, so gradients also reach a learnable range.
        """
        self.rounding = rounding

    def grid_coordinates(self, x: Tensor) -> Tensor:
        """``x·(1/s)`` in the layout its ranges apply to (per_group: the [groups, group_size] view):
        what round-to-nearest, or a learned rounding, turns into grid levels."""
        view = self._to_groups(x) if self.granularity == "per_group" else x
        scale, _ = self._qparams(view, self._range_axis(view))
        return view * (1.0 / scale)

    def range_parameters(self) -> list[nn.Parameter]:
        """The learnable range parameters (empty when fixed), for their own optimizer group."""
        return [] if self.learned_range is None else list(self.learned_range.parameters())

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.granularity == "per_group":
            groups = self._to_groups(x)
            if self.calibrating:
                self.estimator.observe(groups)
                return x
            return self._from_groups(self._quantize(groups, 0), x)
        if self.calibrating:
            if self.estimator is not None:
                self.estimator.observe(x)
            return x
        if self.granularity == "per_token":
            return self._per_token(x)
        return self._quantize(x, self._range_axis(x))

    def _range_axis(self, x: Tensor) -> int | None:
        """The axis ranges run along in ``x`` (per_group: ``x`` is the groups view, a range a row)."""
        if self.granularity == "per_group":
            return 0
        return None if self.granularity == "per_tensor" else self.axis % x.dim()

    def _qparams(self, x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
        """Scale and zero point (float, broadcastable against ``x``), learned or stored."""
        # qparams in fp32 even after model.half(): the fused kernels and 16-bit grids need it
        self._check_calibrated()
        if self.learned_range is not None:
            scale, zero_point = self.learned_range(x.numel() // self.scale.numel())
        else:
            scale, zero_point = self.scale, self.zero_point
        return self._bcast(scale.float(), x, axis), self._bcast(zero_point.float(), x, axis)

    def _quantize(self, x: Tensor, axis: int | None) -> Tensor:
        """Fake-quantize with the stored (or learned) range: one, or one per index of ``axis``."""
        if self.rounding is None and self.learned_range is None:  # the fast fixed-range kernels
            self._check_calibrated()
            return fake_quant_fixed(x, self.scale.float(), self.zero_point, self.qmin, self.qmax, axis)
        scale, zero_point = self._qparams(x, axis)
        if self.rounding is not None:
            return fake_quant_rounded(x, scale, zero_point, self.qmin, self.qmax, self.rounding)
        return fake_quant(x, scale, zero_point, self.qmin, self.qmax)

    def _check_calibrated(self) -> None:
        if self.scale.numel() == 0:
            raise RuntimeError("FakeQuantizer is not calibrated: calibrate(), run data, freeze()")

    def _to_groups(self, w: Tensor) -> Tensor:
        """A 2-D weight as [out·in/group_size, group_size]: one row per group, output-major."""
        if w.dim() != 2:
            raise ValueError(f"per_group quantizes 2-D weights, got a tensor of shape {tuple(w.shape)}")
        rows = w if self.axis % 2 == 0 else w.t()  # [out, in]
        if rows.shape[1] % self.group_size:
            raise ValueError(f"per_group: group_size {self.group_size} does not divide the input "
                             f"dimension {rows.shape[1]} of a weight of shape {tuple(w.shape)}; "
                             "choose a group_size that divides it")
        return rows.reshape(-1, self.group_size)

    def _from_groups(self, groups: Tensor, like: Tensor) -> Tensor:
        if self.axis % 2 == 0:
            return groups.view(like.shape)
        return groups.view(like.shape[1], like.shape[0]).t().contiguous()

    def _per_token(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        lo, hi = torch.aminmax(rows.detach().float(), dim=1)
        scale, zero_point = qparams_from_range(lo, hi, self.qmin, self.qmax, self.symmetric)
        out = fake_quant_fixed(rows, scale, zero_point.to(torch.int32), self.qmin, self.qmax, axis=0)
        return out.view_as(x)

    @staticmethod
    def _bcast(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
        if axis is None:
            return t
        return t.view([-1 if d == axis else 1 for d in range(x.dim())])

    # -- export / load ----------------------------------------------------------------------
    @torch.no_grad()
    def encodings(self) -> dict[str, Any]:
        """JSON-ready qparams: learned values when learnable, None when dynamic or uncalibrated."""
        scale = zero_point = None
        if self.learned_range is not None:
            scale, zero_point = self.learned_range(1)
        elif self.scale.numel() > 0:
            scale, zero_point = self.scale, self.zero_point
        return {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "granularity": self.granularity,
            "axis": self.axis,
            "group_size": self.group_size,
            "scale": None if scale is None else scale.reshape(-1).tolist(),
            "zero_point": None if zero_point is None else zero_point.reshape(-1).int().tolist(),
        }

    @torch.no_grad()
    def load_encodings(self, encodings: dict[str, Any]) -> "FakeQuantizer":
        """Fix the range to saved ``encodings()`` (fixed from then on: what a runtime would use).

        Refuses encodings of another grid (bits, symmetry, granularity, group size), so that a
        saved file cannot silently re-grid a quantizer it was not written by.
        """
        mine = {k: getattr(self, k) for k in ("bits", "symmetric", "granularity", "group_size")}
        theirs = {k: encodings.get(k) for k in mine}
        if mine != theirs:
            raise ValueError(f"encodings for {theirs} do not fit a quantizer with {mine}")
        if encodings.get("scale") is None:
            raise ValueError("encodings without a scale (a dynamic or uncalibrated quantizer) fix no range")
        self.scale = torch.tensor(encodings["scale"], dtype=torch.float32).reshape(self._range_shape())
        self.zero_point = torch.tensor(encodings["zero_point"], dtype=torch.int32).reshape(self._range_shape())
        self.learned_range = None
        self.calibrating = False
        return self

    @torch.no_grad()
    def codes(self, w: Tensor) -> Tensor:
        """The integer grid levels of ``w`` (int32, in ``grid_coordinates``' layout: per_group the
        [groups, group_size] view): what a runtime stores; ``(codes − z)·s`` is ``self(w)`` exactly."""
        quantized = self(w)
        view = self._to_groups(quantized) if self.granularity == "per_group" else quantized
        scale, zero_point = self._qparams(view, self._range_axis(view))
        return (torch.round(view / scale) + zero_point).to(torch.int32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A fresh quantizer has empty qparams and no learned range: take the saved shapes first.
        saved = state_dict.get(prefix + "scale")
        if saved is not None and saved.shape != self.scale.shape:
            self.set_range(torch.zeros(saved.shape), torch.zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        parts = [f"bits={self.bits}", f"symmetric={self.symmetric}", f"granularity={self.granularity}"]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.group_size is not None:
            parts.append(f"group_size={self.group_size}")
        if self.estimator is not None:
            parts.append(f"estimator={self.estimator_name}")
        if self.parameterization != "none":
            parts.append(f"learnable={self.parameterization}")
        if self.sigmoid:
            parts.append("sigmoid=True")
        if self.rounding is not None:
            parts.append(f"rounding={type(self.rounding).__name__}")
        if not self.enabled:
            parts.append("disabled")
        elif self.calibrating:
            parts.append("calibrating")
        return ", ".join(parts)
