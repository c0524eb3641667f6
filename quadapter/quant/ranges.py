"""Range estimators: turn calibration tensors into a clipping range (min, max).

Every estimator reduces over all dims but ``axis`` (per channel) or over everything
(``axis=None``, per tensor, 0-dim results). Estimators return the raw range; making it include 0
and keeping the scale positive is ``qparams_from_range``'s job, so degenerate data (all zeros,
min == max) needs no special case here.
"""

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from quadapter.quant.functional import (
    check_bits,
    check_choice,
    fake_quant,
    qparams_from_range,
    quant_range,
)


def _rows(x: Tensor, axis: int | None) -> Tensor:
    """View ``x`` as [channels, elements]; one row per tensor when ``axis`` is None."""
    x = x.detach()
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)


class RangeEstimator(ABC):
    """Common interface: ``observe`` batches, then read ``range()``; ``reset`` to start over."""

    name: str
    needs_grid = False  # True: the constructor takes ``bits`` and ``symmetric``

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.reset()

    def reset(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    @abstractmethod
    def observe(self, x: Tensor) -> None: ...

    def range(self) -> tuple[Tensor, Tensor]:
        if self.lo is None or self.hi is None:
            raise RuntimeError(f"{self.name} estimator: range() called before any observe()")
        return self._out(self.lo), self._out(self.hi)

    def _out(self, t: Tensor) -> Tensor:
        return t[0] if self.axis is None else t


class MinMaxEstimator(RangeEstimator):
    """Min and max over everything observed since the last reset."""

    name = "minmax"

    def observe(self, x: Tensor) -> None:
        lo, hi = torch.aminmax(_rows(x, self.axis), dim=1)
        if self.lo is not None:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo, self.hi = lo, hi


class RunningMinMaxEstimator(RangeEstimator):
    """Exponential moving average of per-batch min and max: robust to one odd batch."""

    name = "running_minmax"

    def __init__(self, axis: int | None = None, momentum: float = 0.1) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum = momentum
        super().__init__(axis)

    def observe(self, x: Tensor) -> None:
        lo, hi = torch.aminmax(_rows(x, self.axis), dim=1)
        if self.lo is not None:
            lo, hi = torch.lerp(self.lo, lo, self.momentum), torch.lerp(self.hi, hi, self.momentum)
        self.lo, self.hi = lo, hi


SAMPLE_SEED = 0x5EED_C0DE  # not 0: keys drawn from the same stream as seed-0 test data correlate


class _Sample:
    """Uniform sample without replacement of all elements observed per row, at most ``size`` each.

    Bottom-k sketch: every element draws a random key and the ``size`` smallest keys survive, so
    memory stays bounded over any number of batches and no batch is favoured. A private generator
    keeps calibration reproducible without touching the global RNG.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.values: Tensor | None = None
        self.keys: Tensor | None = None
        self.gen: torch.Generator | None = None

    def add(self, rows: Tensor) -> None:
        if self.gen is None:
            self.gen = torch.Generator(device=rows.device).manual_seed(self.seed)
        keys = torch.rand(rows.shape, generator=self.gen, device=rows.device)
        if self.values is not None:
            rows, keys = torch.cat([self.values, rows], 1), torch.cat([self.keys, keys], 1)
        if rows.shape[1] > self.size:
            keep = keys.topk(self.size, dim=1, largest=False).indices
            rows, keys = rows.gather(1, keep), keys.gather(1, keep)
        self.values, self.keys = rows, keys


class PercentileEstimator(RangeEstimator):
    """Clip to the ``percentile``-th and (100 - ``percentile``)-th percentiles: ignores outliers."""

    name = "percentile"

    def __init__(
        self,
        axis: int | None = None,
        percentile: float = 99.99,
        max_samples: int = 2**16,
        seed: int = SAMPLE_SEED,
    ) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        if not 1 <= max_samples <= 2**24:  # torch.quantile's per-row limit
            raise ValueError(f"max_samples must be in 1..2**24, got {max_samples!r}")
        self.percentile, self.max_samples, self.seed = percentile, max_samples, seed
        super().__init__(axis)

    def reset(self) -> None:
        self.sample = _Sample(self.max_samples, self.seed)

    def observe(self, x: Tensor) -> None:
        self.sample.add(_rows(x, self.axis))

    def range(self) -> tuple[Tensor, Tensor]:
        if self.sample.values is None:
            raise RuntimeError(f"{self.name} estimator: range() called before any observe()")
        values = self.sample.values.float()
        p = self.percentile / 100.0
        q = torch.quantile(values, torch.tensor([1.0 - p, p], device=values.device), dim=1)
        return self._out(q[0]), self._out(q[1])


class MSEEstimator(MinMaxEstimator):
    """Clipping ratio of the observed min/max that minimizes the quantization MSE of the data.

    Candidates ``r * (min, max)`` for ``r = 1/n .. n/n`` are scored on a bounded uniform sample
    of the data, all candidates and channels at once, in chunks of about ``chunk_elems`` floats.
    """

    name = "mse"
    needs_grid = True

    def __init__(
        self,
        axis: int | None = None,
        *,
        bits: int,
        symmetric: bool,
        num_candidates: int = 100,
        max_samples: int = 2**16,
        seed: int = SAMPLE_SEED,
        chunk_elems: int = 2**22,
    ) -> None:
        if num_candidates < 1 or max_samples < 1:
            raise ValueError(f"need num_candidates, max_samples >= 1: {num_candidates}, {max_samples}")
        self.qmin, self.qmax = quant_range(check_bits(bits), symmetric)
        self.symmetric, self.num_candidates = symmetric, num_candidates
        self.max_samples, self.seed, self.chunk_elems = max_samples, seed, chunk_elems
        super().__init__(axis)

    def reset(self) -> None:
        super().reset()
        self.sample = _Sample(self.max_samples, self.seed)

    def observe(self, x: Tensor) -> None:
        super().observe(x)
        self.sample.add(_rows(x, self.axis))

    @torch.no_grad()
    def range(self) -> tuple[Tensor, Tensor]:
        super().range()  # raises if nothing was observed
        x = self.sample.values.float()  # [C, M]
        lo, hi = self.lo.float(), self.hi.float()
        ratios = torch.arange(1, self.num_candidates + 1, device=x.device) / self.num_candidates
        errors = []
        for r in ratios.split(max(1, self.chunk_elems // x.numel())):
            scale, zero_point = qparams_from_range(
                r[:, None] * lo, r[:, None] * hi, self.qmin, self.qmax, self.symmetric
            )
            xq = fake_quant(x, scale[..., None], zero_point[..., None], self.qmin, self.qmax)  # G,C,M
            errors.append((xq - x).square().mean(-1))
        errors = torch.cat(errors).flip(0)  # ties go to the widest range: least clipping
        best = ratios[len(ratios) - 1 - errors.argmin(0)]
        return self._out(best * lo), self._out(best * hi)


ESTIMATORS: dict[str, type[RangeEstimator]] = {
    cls.name: cls
    for cls in (MinMaxEstimator, RunningMinMaxEstimator, PercentileEstimator, MSEEstimator)
}


def make_estimator(name: str, **kw) -> RangeEstimator:
    """Build an estimator by name (``minmax``, ``running_minmax``, ``percentile``, ``mse``)."""
    return ESTIMATORS[check_choice("range estimator", name, tuple(ESTIMATORS))](**kw)
