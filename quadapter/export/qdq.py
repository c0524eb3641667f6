"""A fake-quantized model in the form ONNX's QDQ format describes, as torch modules.

``to_qdq(model)`` swaps every quantizer site QuantSim put in place for its runtime form:

- a quantized layer's weight becomes its integer codes (int8/uint8, int16/uint16 past 8 bits) with
  their scales and zero points, dequantized on the fly (ONNX ``DequantizeLinear``; per channel along
  the output axis; per group as a [groups, group_size] tensor dequantized per row and reshaped);
- an activation quantizer becomes a quantize-dequantize pair (``QuantizeLinear`` →
  ``DequantizeLinear``, per tensor) on an unsigned type (a signed grid
  is shifted up, zero point with it: the same values). A grid narrower than its storage type (e.g.
  4-bit codes in uint8) clips in float first, where the grid ends, since ``QuantizeLinear``
  saturates only at the type's own limits.

Two custom ops carry the quantizers through ``torch.export``; their ONNX translations
(``TRANSLATIONS``, for ``torch.onnx.export(custom_translation_table=...)``) emit the standard
operators. In PyTorch the swapped model computes exactly what the fake-quantized one did: the codes
dequantize to the fake-quantized weight bit for bit, and the activation op is the same kernel.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from quadapter.errors import UserError
from quadapter.quant.functional import fake_quant_fixed
from quadapter.quant.quantizer import FakeQuantizer
from quadapter.quant.sim import QuantizedLayer, parent_module

# (torch dtype of the stored codes, its lowest and highest value), narrowest first
STORAGE = ((torch.uint8, 0, 255), (torch.int8, -128, 127), (torch.uint16, 0, 65535),
           (torch.int16, -32768, 32767))


class ExportError(UserError):
    """A run or a quantizer site the export cannot express: says which and what to do instead."""


def storage_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The narrowest ONNX quantized type holding the integer grid ``[qmin, qmax]``."""
    for dtype, lo, hi in STORAGE:
        if lo <= qmin and qmax <= hi:
            return dtype
    raise ExportError(f"an integer grid [{qmin}, {qmax}] fits no ONNX quantized type (8 or 16 bits)")


# the same ranges by ONNX type name (onnx_ir's DataType names: UINT8, INT8, ...), for the translations
_ONNX_RANGES = {str(dtype).removeprefix("torch.").upper(): (lo, hi) for dtype, lo, hi in STORAGE}


# -- the ops torch.export sees ---------------------------------------------------------------------
@torch.library.custom_op("quadapter::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: Tensor, scale: Tensor, zero_point: Tensor, lo: Tensor, hi: Tensor, qmin: int,
                        qmax: int) -> Tensor:
    """Fake quantization with fixed per-tensor qparams.

    ``lo``/``hi`` are where the grid ends in float, ``(qmin − z)·s`` and ``(qmax − z)·s``: the ONNX
    form clips there when the grid is narrower than its storage type (here the clamp does it)."""
    return fake_quant_fixed(x, scale, zero_point.to(torch.int32), qmin, qmax)


@quantize_dequantize.register_fake
def _(x, scale, zero_point, lo, hi, qmin, qmax):
    return torch.empty_like(x)


@torch.library.custom_op("quadapter::dequantize", mutates_args=())
def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    """``(codes − zero_point)·scale`` per index of ``axis`` (``DequantizeLinear``)."""
    shape = [-1 if d == axis % codes.dim() else 1 for d in range(codes.dim())]
    return (codes.to(torch.float32) - zero_point.to(torch.float32).view(shape)) * scale.view(shape)


@dequantize.register_fake
def _(codes, scale, zero_point, axis):
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


# -- their ONNX translations (onnxscript, traced when the exporter meets the ops) ------------------
def _onnx_quantize_dequantize(x, scale, zero_point, lo, hi, qmin: int, qmax: int):
    from onnxscript import opset21 as op

    if (qmin, qmax) != _ONNX_RANGES[zero_point.dtype.name]:
        x = op.Clip(x, lo, hi)  # where the grid ends: QuantizeLinear saturates only at the type's limits
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero_point), scale, zero_point)


def _onnx_dequantize(codes, scale, zero_point, axis: int):
    from onnxscript import opset21 as op

    return op.DequantizeLinear(codes, scale, zero_point, axis=axis)


TRANSLATIONS: dict[Callable, Callable] = {
    torch.ops.quadapter.quantize_dequantize.default: _onnx_quantize_dequantize,
    torch.ops.quadapter.dequantize.default: _onnx_dequantize,
}


# -- the runtime-form modules ----------------------------------------------------------------------
def _check_exportable(q: nn.Module, site: str) -> FakeQuantizer:
    if not isinstance(q, FakeQuantizer):
        raise ExportError(f"{site}: {getattr(q, 'bits', type(q).__name__)} weights have no QDQ export yet; "
                          "export covers integer grids (bits.weight 2..16)")
    if q.granularity == "per_token":
        raise ExportError(f"{site}: per_token ranges are dynamic, one per token: ONNX's DynamicQuantizeLinear "
                          "is per tensor and uint8 only, so it cannot express them; quantize activations "
                          "per_tensor (quantizer.act.granularity=per_tensor) to export")
    if q.rounding is not None:
        raise ExportError(f"{site}: a learned rounding is still attached; export the saved model, whose "
                          "weights lie on their grid")
    if q.scale.numel() == 0 and q.learned_range is None:
        raise ExportError(f"{site}: the quantizer was never calibrated; calibrate before exporting")
    return q


class QuantizeDequantize(nn.Module):
    """An activation quantizer's runtime form: QuantizeLinear → DequantizeLinear."""

    def __init__(self, q: FakeQuantizer, site: str) -> None:
        super().__init__()
        enc = _check_exportable(q, site).encodings()
        if q.granularity != "per_tensor":
            raise ExportError(f"{site}: {q.granularity} activation ranges run along the matmul's reduction axis, "
                              "which integer kernels cannot factor out (onnxruntime's MatMulIntegerToFloat "
                              "refuses them); quantize activations per_tensor (quantizer.act.granularity="
                              "per_tensor) to export")
        # unsigned storage, a signed grid shifted up with its zero point: onnxruntime's QDQ optimizers
        # (which turn int8 activations into uint8 themselves) fail on opset-21 int8 activation pairs
        shift = max(0, -q.qmin)
        dtype = storage_dtype(q.qmin + shift, q.qmax + shift)
        zero_point = torch.tensor(enc["zero_point"], dtype=torch.int32).reshape(()) + shift
        self.register_buffer("scale", torch.tensor(enc["scale"], dtype=torch.float32).reshape(()))
        self.register_buffer("zero_point", zero_point.to(dtype))
        self.qmin, self.qmax = q.qmin + shift, q.qmax + shift
        self.register_buffer("lo", (self.qmin - zero_point).float() * self.scale)
        self.register_buffer("hi", (self.qmax - zero_point).float() * self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quadapter.quantize_dequantize(x, self.scale, self.zero_point, self.lo, self.hi,
                                                       self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"grid=[{self.qmin}, {self.qmax}], {self.zero_point.dtype}"


class DequantizedWeight(nn.Module):
    """A quantized weight as a runtime stores it: integer codes, scales, zero points."""

    def __init__(self, q: FakeQuantizer, weight: Tensor, site: str) -> None:
        super().__init__()
        enc = _check_exportable(q, site).encodings()
        dtype = storage_dtype(q.qmin, q.qmax)
        shape = () if q.granularity == "per_tensor" else (-1,)
        self.register_buffer("codes", q.codes(weight.detach().float()).to(dtype))
        self.register_buffer("scale", torch.tensor(enc["scale"], dtype=torch.float32).reshape(shape))
        self.register_buffer("zero_point", torch.tensor(enc["zero_point"], dtype=torch.int32).reshape(shape).to(dtype))
        # codes are [groups, group_size] per group (ranges per row); otherwise the weight's own layout
        self.axis = 0 if q.granularity == "per_group" else (q.axis or 0)
        self.shape, self.transposed = tuple(weight.shape), q.granularity == "per_group" and q.axis % 2 == 1

    def forward(self) -> Tensor:
        w = torch.ops.quadapter.dequantize(self.codes, self.scale, self.zero_point, self.axis)
        if self.codes.shape == self.shape:
            return w
        if self.transposed:  # HF Conv1D [in, out]: the groups ran along the input axis of its transpose
            return w.reshape(self.shape[1], self.shape[0]).t()
        return w.reshape(self.shape)

    def extra_repr(self) -> str:
        return f"codes={tuple(self.codes.shape)} {self.codes.dtype}, axis={self.axis}"


class QDQLayer(nn.Module):
    """A quantized linear layer in runtime form: QDQ on its input, its weight from codes."""

    def __init__(self, wrapper: QuantizedLayer, site: str) -> None:
        super().__init__()
        if wrapper.input_scale is not None:
            raise ExportError(f"{site}: a Quadapter scale is still attached; fold it first (the saved "
                              "model of a quadapter run is folded)")
        layer = wrapper.layer
        self.layer, self.layer_forward = layer, wrapper.layer_forward
        q_in, q_w = wrapper.input_quantizer, wrapper.weight_quantizer
        self.input_quantizer = (QuantizeDequantize(q_in, f"{site}.input")
                                if q_in is not None and q_in.enabled else None)
        self.dequantized_weight = (DequantizedWeight(q_w, layer.weight, f"{site}.weight")
                                   if q_w is not None and q_w.enabled else None)
        if self.dequantized_weight is not None:  # the codes replace the float weight: none of it is exported
            layer.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        weight = self.layer.weight if self.dequantized_weight is None else self.dequantized_weight()
        return self.layer_forward(self.layer, x, weight)


@torch.no_grad()
def to_qdq(model: nn.Module) -> dict[str, int]:
    """Swap, in place, every QuantSim site of ``model`` for its runtime form; returns how many of
    each kind there were. Disabled quantizers stay full precision, as they computed."""
    counts = {"layers": 0, "weights": 0, "activations": 0}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    for name, wrapper in layers:
        qdq = QDQLayer(wrapper, name)
        parent, attr = parent_module(model, name)
        setattr(parent, attr, qdq)
        counts["layers"] += 1
        counts["weights"] += qdq.dequantized_weight is not None
        counts["activations"] += qdq.input_quantizer is not None
    for name, module in list(model.named_modules()):
        q = getattr(module, "output_quantizer", None)
        if isinstance(q, nn.Module) and not isinstance(q, QuantizeDequantize) and q.enabled:
            module.output_quantizer = QuantizeDequantize(q, f"{name}.output")
            counts["activations"] += 1
        elif isinstance(q, FakeQuantizer):  # disabled: the hook passes the output through
            module.output_quantizer = nn.Identity()
    return counts
