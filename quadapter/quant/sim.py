"""QuantSim: fake-quantize a model in place at given sites, calibrate it, and undo it exactly.

Model knowledge stays with the caller (``quadapter.models``): it names the sites and, for each
linear layer, the output-channel axis of its weight and how to run the layer with a substitute
weight, which is all it takes to cover both ``nn.Linear`` (weight [out, in]) and HF's ``Conv1D``
(weight [in, out]) without this package importing transformers.

Two kinds of sites, as in ``torch.ao.quantization``: a *layer* site swaps the layer for a
``QuantizedLayer`` wrapper that quantizes its input and its weight; an *output* site keeps the
module, adds an ``output_quantizer`` child and a forward hook (activations only: embeddings,
residual stream). ``remove()`` puts every original module back and drops every hook and child,
so the model's outputs and state-dict keys are exactly what they were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from quadapter.quant.diagnostics import OutlierStats
from quadapter.quant.levels import LEVELS, TWN_THRESHOLD, LevelQuantizer
from quadapter.quant.quantizer import FakeQuantizer

WeightQuantizer = FakeQuantizer | LevelQuantizer

LayerForward = Callable[[nn.Module, Tensor, Tensor], Tensor]


def linear_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``nn.Linear`` with a substitute weight."""
    return F.linear(x, weight, layer.bias)


@dataclass(frozen=True)
class QuantizerConfig:
    """Everything a quantizer is built from, except the axis, which the site decides.

    ``bits`` is an integer bit-width (a uniform ``FakeQuantizer``) or, for weights, one of
    ``LEVELS`` (a ``LevelQuantizer``: ternary or binary; symmetric, estimator and learnable do not
    apply to it).
    """

    bits: int | str
    symmetric: bool = False
    granularity: str = "per_tensor"
    estimator: str = "minmax"
    estimator_kw: dict[str, Any] = field(default_factory=dict)
    learnable: str = "none"
    sigmoid: bool = False
    group_size: int | None = None  # per_group only: input channels per range
    threshold: float = TWN_THRESHOLD  # ternary only: Δ = threshold·mean|W|

    def build(self, axis: int | None) -> WeightQuantizer:
        """``axis`` is used for ``per_channel`` and ``per_group`` only (weights: output channel;
        activations: -1)."""
        if self.bits in LEVELS:
            return LevelQuantizer(self.bits, self.granularity,
                                  axis if self.granularity == "per_channel" else None, self.threshold)
        return FakeQuantizer(
            self.bits, self.symmetric, self.granularity,
            axis=axis if self.granularity in ("per_channel", "per_group") else None,
            estimator=self.estimator, estimator_kw=dict(self.estimator_kw),
            learnable=self.learnable, sigmoid=self.sigmoid, group_size=self.group_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerSite:
    """A linear layer at ``name``: its input and weight are quantized."""

    name: str
    weight_axis: int  # output-channel axis of the weight: 0 for nn.Linear, 1 for HF Conv1D
    forward: LayerForward = linear_forward  # (layer, input, weight) -> output


@dataclass(frozen=True)
class OutputSite:
    """A module at ``name`` whose (tensor) output is quantized."""

    name: str


class QuantizedLayer(nn.Module):
    """A linear layer whose input and weight pass through fake quantizers.

    In eval mode, while the weight needs no gradient (PTQ, evaluation), its fake-quantized copy
    is computed once and reused; training mode recomputes it every forward. The cache is keyed on
    the identity, storage and version counter of the weight and of every tensor of the weight
    quantizer: in-place updates (optimizer steps, ``load_state_dict``, ``set_range``), swapped
    parameters and ``.to()``/``.half()`` all invalidate it. It holds a reference to the storages
    it was built from, so a freed storage's address can never be mistaken for the old weight.
    Edits through ``.data`` bypass version counters (as for every autograd-visible cache): make
    them under ``torch.no_grad()`` on the parameter itself.

    An optional ``input_scale`` (a module returning a positive per-input-channel α, Quadapter)
    computes ``Q_a(x·α) @ Q_w(W/α)``: the inverse scale sits on the weight's input axis rather
    than on the activation, so that folding α into the neighbours is exact even with the weight
    quantized. Its tensors join the cache key, so a changed α recomputes the cached weight.
    """

    def __init__(
        self,
        layer: nn.Module,
        forward: LayerForward,
        input_quantizer: FakeQuantizer | None,
        weight_quantizer: WeightQuantizer | None,
        cache_weight: bool = True,
    ) -> None:
        super().__init__()
        self.layer, self.layer_forward = layer, forward
        self.input_quantizer, self.weight_quantizer = input_quantizer, weight_quantizer
        self.cache_weight = cache_weight
        self._cached: Tensor | None = None
        # (tensor, its storage: pinned so that its address cannot be reused, data_ptr, version)
        self._cache_key: list[tuple[Tensor, Any, int, int]] = []
        self.register_module("input_scale", None)  # None: no child, no state-dict keys
        self.input_axis: int | None = None

    def set_input_scale(self, scale: nn.Module | None, input_axis: int | None = None) -> None:
        """Attach (or, with ``None``, drop) a per-input-channel scale α.

        ``input_axis`` is the weight's input-channel axis (0 for HF Conv1D [in, out], 1 for
        nn.Linear [out, in]); the site knows it, this wrapper does not.
        """
        if scale is not None and input_axis is None:
            raise ValueError("set_input_scale needs the weight's input axis")
        self.input_scale = scale
        self.input_axis = input_axis if scale is not None else None
        self._cached, self._cache_key = None, []

    def scaled_weight(self, weight: Tensor, alpha: Tensor) -> Tensor:
        """``weight`` with its input channels divided by ``alpha`` (also used by the fold)."""
        shape = [1] * weight.dim()
        shape[self.input_axis] = -1
        return weight / alpha.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        alpha = None
        if self.input_scale is not None:
            alpha = self.input_scale()
            x = x * alpha
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self.layer_forward(self.layer, x, self.quantized_weight(alpha))

    def effective_weight(self, alpha: Tensor | None = None) -> Tensor:
        """The weight the weight quantizer sees: ``W`` with input channels divided by α."""
        if self.input_scale is None:
            return self.layer.weight
        return self.scaled_weight(self.layer.weight, self.input_scale() if alpha is None else alpha)

    def quantized_weight(self, alpha: Tensor | None = None) -> Tensor:
        """``alpha``: the input scale's current value when the caller already computed it."""
        weight, q = self.layer.weight, self.weight_quantizer
        if q is None or not q.enabled or q.calibrating:
            weight = self.effective_weight(alpha)
            return weight if q is None else q(weight)
        tensors = [weight, *q.parameters(), *q.buffers()]
        if self.input_scale is not None:
            tensors += [*self.input_scale.parameters(), *self.input_scale.buffers()]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if needs_grad or self.training or not self.cache_weight:
            self._cached, self._cache_key = None, []
            return q(self.effective_weight(alpha))
        if not self._cache_valid(tensors):
            # A plain tensor even under inference_mode, so it can also serve later training.
            with torch.inference_mode(False), torch.no_grad():
                self._cached = q(self.effective_weight(alpha))
            self._cache_key = [(t, t.untyped_storage(), t.data_ptr(), t._version) for t in tensors]
        return self._cached

    def _cache_valid(self, tensors: list[Tensor]) -> bool:
        if self._cached is None or len(tensors) != len(self._cache_key):
            return False
        return all(t is ref and t.data_ptr() == ptr and t._version == version
                   for t, (ref, _storage, ptr, version) in zip(tensors, self._cache_key))

    def extra_repr(self) -> str:
        parts = [] if self.cache_weight else ["cache_weight=False"]
        if self.input_axis is not None:
            parts.append(f"input_axis={self.input_axis}")
        return ", ".join(parts)


def _quantize_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Quantize a tensor output, or the first element of a tuple (HF blocks in transformers 4)."""
    if isinstance(output, Tensor):
        return module.output_quantizer(output)
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (module.output_quantizer(output[0]), *output[1:])
    raise TypeError(f"output site {type(module).__name__} returns {type(output).__name__}, not a "
                    "tensor or a tuple starting with one: it cannot be an output site")


def _device_of(module: nn.Module, model: nn.Module) -> torch.device:
    """Where a site's quantizers live: with the module's parameters, else the model's."""
    for source in (module, model):
        tensor = next(source.parameters(), None)
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")


def parent_module(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding submodule ``name`` and its attribute name there (to swap it)."""
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


class QuantSim:
    """Fake-quantizes ``model`` in place at the given sites (``remove()`` undoes it exactly).

    Args:
        model: modified in place; ``sim.model`` is the same object.
        layers: linear layers whose input (``act``) and weight (``weight``) are quantized.
        outputs: modules whose output is quantized (``act``).
        weight, act: quantizer configs; ``None`` leaves that side in full precision.
        cache_weight: reuse fake-quantized weights while they need no gradient. Costs one extra
            copy of every quantized weight in memory.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerSite],
        outputs: Sequence[OutputSite] = (),
        weight: QuantizerConfig | None = None,
        act: QuantizerConfig | None = None,
        cache_weight: bool = True,
    ) -> None:
        if weight is None and act is None:
            raise ValueError("QuantSim needs a weight or an activation quantizer config (or both)")
        if act is None and not layers:
            raise ValueError("weight-only quantization needs layer sites")
        self.model, self.weight_config, self.act_config = model, weight, act
        self.layers: dict[str, QuantizedLayer] = {}
        self.outputs: dict[str, nn.Module] = {}
        self._hooks: dict[str, RemovableHandle] = {}
        act_axis = -1  # activations: channels are the last dim
        try:
            for site in layers:
                parent, attr = parent_module(model, site.name)
                layer = getattr(parent, attr)
                if isinstance(layer, QuantizedLayer) or site.name in self.layers:
                    raise ValueError(f"layer {site.name!r} is already quantized")
                wrapper = QuantizedLayer(
                    layer, site.forward,
                    act.build(act_axis) if act is not None else None,
                    weight.build(site.weight_axis) if weight is not None else None,
                    cache_weight,
                )
                setattr(parent, attr, wrapper.to(_device_of(layer, model)))
                self.layers[site.name] = wrapper
            for site in outputs if act is not None else ():
                module = model.get_submodule(site.name)
                if hasattr(module, "output_quantizer"):
                    raise ValueError(f"output of {site.name!r} is already quantized")
                quantizer = act.build(act_axis).to(_device_of(module, model))
                module.add_module("output_quantizer", quantizer)
                self._hooks[site.name] = module.register_forward_hook(_quantize_output)
                self.outputs[site.name] = module
        except Exception:
            self.remove()
            raise

    # -- quantizers -------------------------------------------------------------------------
    def weight_quantizers(self) -> dict[str, WeightQuantizer]:
        return {f"{name}.weight": w.weight_quantizer for name, w in self.layers.items()
                if w.weight_quantizer is not None}

    def activation_quantizers(self) -> dict[str, FakeQuantizer]:
        """Keyed ``<layer>.input`` and ``<module>.output``: the tensors they quantize."""
        acts = {f"{name}.input": w.input_quantizer for name, w in self.layers.items()
                if w.input_quantizer is not None}
        acts.update({f"{name}.output": m.output_quantizer for name, m in self.outputs.items()})
        return acts

    def quantizers(self) -> dict[str, WeightQuantizer]:
        return {**self.weight_quantizers(), **self.activation_quantizers()}

    def enable(self, enabled: bool = True) -> QuantSim:
        for q in self.quantizers().values():
            q.enable(enabled)
        return self

    def disable(self) -> QuantSim:
        return self.enable(False)

    # -- calibration ------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(
        self,
        batches: Iterable,
        forward: Callable[[nn.Module, Any], Any] = lambda model, batch: model(batch),
        diagnostics: bool = False,
        progress: bool = True,
    ) -> dict[str, OutlierStats]:
        """Set the range of every enabled quantizer: weights from themselves, activations from
        ``forward`` over ``batches``.

        Activation ranges are observed with the weights already quantized, so they describe the
        network that will run. With ``diagnostics``, also returns the outlier statistics of
        every activation quantizer's input.
        """
        for wrapper in self.layers.values():
            q = wrapper.weight_quantizer
            if q is not None and q.enabled:
                q.calibrate()
                q(wrapper.effective_weight())  # W/α where an input scale is attached
                q.freeze()
        acts = {name: q for name, q in self.activation_quantizers().items() if q.enabled}
        stats = {name: OutlierStats() for name in acts} if diagnostics else {}
        hooks = [acts[name].register_forward_pre_hook(lambda m, args, s=s: s.observe(args[0]))
                 for name, s in stats.items()]
        training = self.model.training
        self.model.eval()
        try:
            for q in acts.values():
                q.calibrate()
            if acts:
                total = len(batches) if hasattr(batches, "__len__") else None
                for batch in tqdm(batches, desc="calibrating", total=total, disable=not progress):
                    forward(self.model, batch)
            for q in acts.values():
                q.freeze()
        finally:
            for q in acts.values():
                q.calibrating = False
            for hook in hooks:
                hook.remove()
            self.model.train(training)
        return stats

    # -- undo -------------------------------------------------------------------------------
    def original_state_dict(self) -> dict[str, Tensor]:
        """The model's state dict under its original keys: wrapped layers' tensors without the
        wrapper level, no quantizer or input-scale entries (what ``save_pretrained`` expects)."""
        rename = {f"{name}.layer.": f"{name}." for name in self.layers}
        dropped = [f"{name}.{child}." for name in self.layers
                   for child in ("input_quantizer", "weight_quantizer", "input_scale")]
        dropped += [f"{name}.output_quantizer." if name else "output_quantizer." for name in self.outputs]
        out = {}
        for key, value in self.model.state_dict().items():
            if any(key.startswith(prefix) for prefix in dropped):
                continue
            prefix = next((p for p in rename if key.startswith(p)), None)
            out[rename[prefix] + key[len(prefix):] if prefix else key] = value
        return out

    def remove(self) -> nn.Module:
        """Restore the original modules; the model computes exactly what it did before."""
        for name, wrapper in self.layers.items():
            parent, attr = parent_module(self.model, name)
            setattr(parent, attr, wrapper.layer)
        for name, module in self.outputs.items():
            self._hooks.pop(name).remove()
            del module.output_quantizer
        self.layers, self.outputs = {}, {}
        return self.model
