"""Range estimators against simple references, and degenerate inputs."""

import pytest
import torch

from quadapter.quant import ESTIMATORS, FakeQuantizer, make_estimator, quant_range


def _batches(seed=0, shape=(3, 7, 5), n=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (i + 1) for i in range(n)]


def _reduce_dims(axis, ndim):
    return tuple(d for d in range(ndim) if d != axis % ndim)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_minmax_is_amin_amax_over_all_batches(axis):
    xs = _batches()
    est = make_estimator("minmax", axis=axis)
    for x in xs:
        est.observe(x)
    lo, hi = est.range()
    allx = torch.cat(xs, 1 if axis == 0 else 0)  # batches along a reduced dim
    dims = None if axis is None else _reduce_dims(axis, 3)
    assert torch.equal(lo, allx.amin() if dims is None else allx.amin(dims))
    assert torch.equal(hi, allx.amax() if dims is None else allx.amax(dims))
    assert lo.shape == (() if axis is None else (allx.shape[axis],))


@pytest.mark.parametrize("axis", [None, 1])
def test_running_minmax_is_ema_of_batch_ranges(axis):
    xs = _batches()
    est = make_estimator("running_minmax", axis=axis, momentum=0.3)
    ref_lo = ref_hi = None
    for x in xs:
        est.observe(x)
        lo, hi = (x.amin(), x.amax()) if axis is None else (x.amin((0, 2)), x.amax((0, 2)))
        ref_lo = lo if ref_lo is None else 0.7 * ref_lo + 0.3 * lo
        ref_hi = hi if ref_hi is None else 0.7 * ref_hi + 0.3 * hi
    lo, hi = est.range()
    assert torch.allclose(lo, ref_lo, rtol=1e-6) and torch.allclose(hi, ref_hi, rtol=1e-6)


@pytest.mark.parametrize("axis", [None, 0, 2])
@pytest.mark.parametrize("percentile", [90.0, 99.0, 100.0])
def test_percentile_equals_torch_quantile_when_everything_fits(axis, percentile):
    xs = _batches()
    est = make_estimator("percentile", axis=axis, percentile=percentile)
    for x in xs:
        est.observe(x)
    allx = torch.cat(xs, 1)  # batches along a dim that is reduced for every axis tested
    rows = allx.reshape(1, -1) if axis is None else allx.movedim(axis, 0).flatten(1)
    p = percentile / 100
    lo, hi = est.range()
    # The pool is a permutation of the data: order statistics are the same.
    ref = torch.quantile(rows, torch.tensor([1 - p, p]), dim=1)
    assert torch.allclose(lo, ref[0].squeeze(), rtol=0, atol=1e-6)
    assert torch.allclose(hi, ref[1].squeeze(), rtol=0, atol=1e-6)


def test_percentile_sample_is_bounded_and_unbiased_across_batches():
    est = make_estimator("percentile", percentile=99.0, max_samples=1000)
    est.observe(torch.zeros(5000))
    est.observe(torch.ones(5000))
    values = est.sample.values
    assert values.numel() == 1000
    assert 0.44 < values.mean().item() < 0.56  # a "keep the newest" pool would give ~1.0

    big = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    est = make_estimator("percentile", percentile=99.0, max_samples=20_000)
    for chunk in big.split(50_000):
        est.observe(chunk)
    lo, hi = est.range()
    ref = torch.quantile(big, torch.tensor([0.01, 0.99]))
    assert abs(lo - ref[0]) < 0.08 and abs(hi - ref[1]) < 0.08


def _brute_force_mse_range(x, bits, symmetric, n):
    """Loop over channels and candidate ratios; quantize with torch's fused op."""
    qmin, qmax = quant_range(bits, symmetric)
    best = []
    for row in x:
        lo, hi = row.min(), row.max()
        errs = []
        for i in range(1, n + 1):
            r = i / n
            clo, chi = min(r * lo.item(), 0.0), max(r * hi.item(), 0.0)
            if symmetric:
                s = max(max(-clo, chi) / qmax, torch.finfo(torch.float32).eps)
                z = 0
            else:
                s = max((chi - clo) / (qmax - qmin), torch.finfo(torch.float32).eps)
                z = int(min(max(round(qmin - clo / s), qmin), qmax))
            xq = torch.fake_quantize_per_tensor_affine(row, s, z, qmin, qmax)
            errs.append(((xq - row) ** 2).mean().item())
        best.append((min(errs), [r for r, e in zip(range(1, n + 1), errs) if e == min(errs)]))
    return best


@pytest.mark.parametrize("bits,symmetric", [(3, False), (4, True), (8, False)])
def test_mse_picks_the_brute_force_optimum(bits, symmetric):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 50, generator=gen) + torch.tensor([[0.0], [2.0], [-1.0], [0.5]])
    x[:, 0] *= 6  # outliers make clipping worthwhile
    n = 40
    est = make_estimator(
        "mse", axis=0, bits=bits, symmetric=symmetric, num_candidates=n, chunk_elems=400
    )
    est.observe(x)
    lo, hi = est.range()
    ref = _brute_force_mse_range(x, bits, symmetric, n)
    qmin, qmax = quant_range(bits, symmetric)
    for c, (min_err, best_ratios) in enumerate(ref):
        q = FakeQuantizer(bits, symmetric)
        q.set_range(lo[c], hi[c])
        err = ((q(x[c]) - x[c]) ** 2).mean().item()
        assert err == pytest.approx(min_err, rel=1e-5, abs=1e-9)
        end, observed = (hi[c], x[c].max()) if x[c].max() > 0 else (lo[c], x[c].min())
        assert round((end / observed).item() * n) == max(best_ratios)  # ties: widest range
    if bits <= 4:  # at low bits clipping the outliers must win somewhere
        assert ((hi < x.amax(1)) | (lo > x.amin(1))).any()

    per_tensor = make_estimator("mse", bits=bits, symmetric=symmetric, num_candidates=n)
    per_tensor.observe(x)
    lo_t, hi_t = per_tensor.range()
    (err_t, _), = _brute_force_mse_range(x.reshape(1, -1), bits, symmetric, n)
    q = FakeQuantizer(bits, symmetric)
    q.set_range(lo_t, hi_t)
    assert ((q(x) - x) ** 2).mean().item() == pytest.approx(err_t, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("fill", [0.0, 3.0, -2.0])
def test_degenerate_ranges_give_finite_positive_scale(name, symmetric, fill):
    q = FakeQuantizer(4, symmetric, "per_channel", axis=0, estimator=name).calibrate()
    x = torch.full((3, 6), fill)
    q(x)
    q.freeze()
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    y = q(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, x, atol=1e-6)  # a constant (or 0) lies on the grid's edge or at 0
    assert torch.equal(q(torch.zeros(3, 6)), torch.zeros(3, 6))  # 0 is always exactly representable


def test_asymmetric_range_always_includes_zero():
    q = FakeQuantizer(8).calibrate()
    q(torch.tensor([2.0, 5.0]))
    q.freeze()
    assert q.zero_point.item() == 0 and q(torch.tensor([0.0])).item() == 0.0
    q.calibrate()
    q(torch.tensor([-5.0, -2.0]))
    q.freeze()
    assert q.zero_point.item() == 255 and q(torch.tensor([0.0])).item() == 0.0


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_range_before_observe_and_reset(name):
    kw = {"bits": 8, "symmetric": False} if ESTIMATORS[name].needs_grid else {}
    est = make_estimator(name, **kw)
    with pytest.raises(RuntimeError, match="before any observe"):
        est.range()
    est.observe(torch.randn(10))
    est.range()
    est.reset()
    with pytest.raises(RuntimeError):
        est.range()
