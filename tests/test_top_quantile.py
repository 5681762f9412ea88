"""fd.TopQuantile streamed over uneven batches equals numpy.quantile (float64) exactly."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.core import histogram_keys
from fastdissect.core.quantile import METHODS, order_statistics


def numpy_thresholds(values: np.ndarray, quantile: float, method: str) -> np.ndarray:
    """values (M, K) -> (K,) reference."""
    return np.quantile(values.astype(np.float64), 1 - quantile, axis=0, method=method)


def stream(values: torch.Tensor, cuts, backend, quantile=0.005, method="linear", **kw) -> fd.TopQuantile:
    """Adds values (M, K) in batches cut at `cuts`, then as many further passes as needed."""
    q = fd.TopQuantile(values.shape[1], quantile, method, backend=backend, **kw)
    batches = torch.tensor_split(values, cuts)
    for b in batches:
        q.add(b)
    while q.needs_pass:
        q.new_pass()
        for b in reversed(batches):  # any order
            q.add(b)
    return q


def uneven_cuts(rng, n):
    return sorted(set(rng.integers(1, n, size=min(n - 1, 7)).tolist())) if n > 1 else []


def adversarial_units(rng, n):
    """(n, 8) float64: normal, ReLU with 99.7% zeros, constant, negative, heavy ties, tiny, huge, mixed."""
    v = np.empty((n, 8))
    v[:, 0] = rng.standard_normal(n)
    v[:, 1] = np.where(rng.random(n) < 0.997, 0.0, rng.random(n))
    v[:, 2] = 3.25
    v[:, 3] = -np.abs(rng.standard_normal(n)) * 100
    v[:, 4] = np.round(rng.standard_normal(n) * 2) / 2
    v[:, 5] = rng.standard_normal(n) * 1e-300
    v[:, 6] = rng.standard_normal(n) * 1e300
    v[:, 7] = np.where(rng.random(n) < 0.5, -0.0, rng.standard_normal(n))
    return v


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 150, 199, 200, 201, 5000])
def test_adversarial_units_every_method(backend, rng, method, n):
    v = adversarial_units(rng, n)
    for quantile in (0.005, fd.NETDISSECT_QUANTILE, 0.5):
        q = stream(torch.from_numpy(v), uneven_cuts(rng, n), backend, quantile, method)
        np.testing.assert_array_equal(q.thresholds().numpy(), numpy_thresholds(v, quantile, method))


def test_relu_zeros_give_zero_threshold(backend, rng):
    v = np.zeros((100000, 2))
    v[rng.choice(100000, 400, replace=False), 0] = 1.0 + rng.random(400)   # 0.4% > 0: T = 0
    v[rng.choice(100000, 600, replace=False), 1] = 1.0 + rng.random(600)   # 0.6% > 0: T > 0
    q = stream(torch.from_numpy(v), [3000, 50000, 50001], backend)
    t = q.thresholds()
    assert t[0].item() == 0.0 and t[1].item() > 1.0
    np.testing.assert_array_equal(t.numpy(), numpy_thresholds(v, 0.005, "linear"))
    assert q.passes == 1
    assert q.state_bytes() < 2 * 8 * (4096 + 3) + 8 * 2000  # zeros are counted, never stored


def test_four_dimensional_half_and_strided_input(backend, rng):
    base = torch.from_numpy(rng.standard_normal((12, 10, 9, 7)))
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        a = base.to(dtype).permute(0, 1, 3, 2)[:, ::2]        # non-contiguous (12, 5, 7, 9)
        q = fd.TopQuantile(5, method="hazen", backend=backend)
        for b in a.split(5):
            q.add(b)
        want = numpy_thresholds(a.double().transpose(0, 1).reshape(5, -1).T.numpy(), 0.005, "hazen")
        np.testing.assert_array_equal(q.thresholds().numpy(), want)


def test_downward_drift_needs_and_finishes_a_further_pass(backend, rng):
    """High values first: the floor rises, then the quantile falls below it."""
    hi = rng.standard_normal((500, 3)) + 50
    lo = rng.standard_normal((200000, 3))
    v = np.concatenate([hi, lo])
    q = fd.TopQuantile(3, backend=backend)
    for b in torch.from_numpy(v).split(10000):
        q.add(b)
    assert q.needs_pass
    with pytest.raises(RuntimeError, match=r"unit\(s\) 0, 1, 2 need another pass"):
        q.thresholds()
    q.new_pass()
    q.add(torch.from_numpy(v))
    assert not q.needs_pass and q.passes == 2
    np.testing.assert_array_equal(q.thresholds().numpy(), numpy_thresholds(v, 0.005, "linear"))
    again = fd.TopQuantile(3, backend=backend)
    batches = lambda: torch.from_numpy(v).split(10000)  # noqa: E731
    for b in batches():
        again.add(b)
    assert torch.equal(again.finish(batches), q.thresholds()) and again.passes == 2


@pytest.mark.parametrize("budget", [1, 7, 1000])
def test_small_refine_budget_narrows_key_ranges_over_several_passes(backend, rng, budget):
    hi = rng.standard_normal((200, 2)) * 0.01 + 10
    lo = rng.standard_normal((100000, 2)) * 1e-3 + 1.0       # the quantile sits in a crowded bin
    lo[:60000, 1] = 1.0                                     # heavy ties there
    v = np.concatenate([hi, lo])
    q = stream(torch.from_numpy(v), [100, 2000, 50000], backend, refine_budget=budget)
    np.testing.assert_array_equal(q.thresholds().numpy(), numpy_thresholds(v, 0.005, "linear"))
    assert q.passes >= (3 if budget < 1000 else 2)


def test_merge_of_shards_equals_one_pass(backend, rng):
    v = adversarial_units(rng, 30000)
    shards = np.array_split(v, [1000, 21000])
    parts = []
    for s in shards:
        q = fd.TopQuantile(8, method="hazen", backend=backend)
        for b in torch.from_numpy(s).split(777):
            q.add(b)
        parts.append(q)
    merged = fd.TopQuantile(8, method="hazen", backend=backend)
    for p in reversed(parts):
        merged.merge(p)
    while merged.needs_pass:
        merged.new_pass()
        merged.add(torch.from_numpy(v))
    np.testing.assert_array_equal(merged.thresholds().numpy(), numpy_thresholds(v, 0.005, "hazen"))


def test_state_dict_round_trip_continues_the_stream(backend, rng):
    v = torch.from_numpy(rng.standard_normal((9000, 4)))
    q = fd.TopQuantile(4, backend=backend)
    q.add(v[:4000])
    restored = fd.TopQuantile(4, backend=backend)
    restored.load_state_dict(q.state_dict())
    restored.add(v[4000:])
    np.testing.assert_array_equal(restored.thresholds().numpy(), numpy_thresholds(v.numpy(), 0.005, "linear"))
    with pytest.raises(ValueError, match="quantile"):
        fd.TopQuantile(4, quantile=0.01).load_state_dict(q.state_dict())


def test_backends_hold_identical_histograms(rng):
    """The C++ bin (csrc/common/histogram_key.h) equals the torch mirror on edge values."""
    edge = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.1754943508222875e-38, 2.0 ** -128,
            2.0 ** -127, 2.0 ** 127, 2.0 ** 128, 1.7976931348623157e308, -1.7976931348623157e308, 1.0, 1.125,
            1.1249999999999998, -1.0, -1.125, 65504.0, 6e-8, 1e-45]
    v = torch.tensor(edge + rng.standard_normal(1000).tolist(), dtype=torch.float64)[:, None]
    states = []
    for backend in ("cpu", "torch"):
        q = fd.TopQuantile(1, backend=backend)
        q.add(v)
        states.append(q.state_dict())
    assert torch.equal(states[0]["counts"], states[1]["counts"])
    assert torch.equal(states[0]["floor"], states[1]["floor"])
    assert torch.equal(states[0]["min_max"], states[1]["min_max"])


def test_keys_preserve_order_and_bins_are_monotone(rng):
    v = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-300, 300, 5000),
                        [0.0, -0.0, 5e-324, -5e-324, np.inf, -np.inf, 1.0, np.nextafter(1.0, 2)]])
    v = torch.from_numpy(np.sort(v))
    k = histogram_keys.keys(v)
    assert bool((k[1:] >= k[:-1]).all())
    assert torch.equal(histogram_keys.values_of(k), v + 0.0)
    b = histogram_keys.bins(v)
    assert bool((b[1:] >= b[:-1]).all()) and int(b.min()) >= 1 and int(b.max()) < histogram_keys.HIST_BINS
    assert histogram_keys.bin_key_range(histogram_keys.bin_of(7e200))[1] == histogram_keys.key_of(np.inf)
    for value in (1.0, -3.5, 1e-30, 7e20):
        lo, hi = histogram_keys.bin_key_range(histogram_keys.bin_of(value))
        assert lo <= histogram_keys.key_of(value) <= hi
        assert histogram_keys.bin_of(histogram_keys.value_of(lo - 1)) < histogram_keys.bin_of(value)
        assert histogram_keys.bin_of(histogram_keys.value_of(hi + 1)) > histogram_keys.bin_of(value)


def test_memory_is_histogram_plus_the_top_values(rng):
    v = torch.from_numpy(rng.standard_normal((200000, 16)).astype(np.float32))
    q = fd.TopQuantile(16)
    peak = 0
    for b in v.split(20000):
        q.add(b)
        peak = max(peak, q.state_bytes())
    kept_per_unit = (q.state_bytes() - 16 * 8 * (4096 + 3)) / 16 / 8
    assert 1.5 * 0.005 * 200000 <= kept_per_unit < 4 * 0.005 * 200000
    assert peak < 0.1 * v.numel() * 4


def test_errors_name_the_problem():
    q = fd.TopQuantile(3)
    with pytest.raises(RuntimeError, match="no values were added"):
        q.thresholds()
    bad = torch.rand(10, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN in unit\(s\) 1"):
        q.add(bad)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"inf in unit\(s\) 1"):
        q.add(bad)
    with pytest.raises(ValueError, match=r"3 units \(dim 1\)"):
        q.add(torch.rand(10, 4))
    with pytest.raises(ValueError, match=r"\[N, K, h, w\] or \[M, K\]"):
        q.add(torch.rand(10))
    with pytest.raises(TypeError, match="int64"):
        q.add(torch.ones(10, 3, dtype=torch.int64))
    q.add(torch.rand(10, 3))
    with pytest.raises(RuntimeError, match="no further pass is needed"):
        q.new_pass()
    with pytest.raises(ValueError, match="method must be one of"):
        fd.TopQuantile(3, method="kll")
    with pytest.raises(ValueError, match="quantile must be a float in"):
        fd.TopQuantile(3, quantile=1.5)


def test_the_gpu_kernels_report_non_finite_values_when_read(rng):
    """No host sync in add(): the CUDA kernels count NaN/inf on the device; reading results raises."""
    bad = torch.from_numpy(rng.standard_normal((50, 3, 2, 2)))
    bad[7, 2, 1, 0] = float("nan")
    bad[9, 0, 0, 0] = float("-inf")
    q = fd.TopQuantile(3, backend="cuda_emu")
    q.add(bad)
    for read in (q.thresholds, q.state_dict, lambda: q.needs_pass):
        with pytest.raises(ValueError, match=r"NaN or inf in unit\(s\) 0, 2 \(counted on the device\)"):
            read()
    t = fd.Tally(3, 2, [0.0, 0.0, 0.0], backend="cuda_emu")
    t.add(bad, torch.ones(50, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"NaN or inf in unit\(s\) 0, 2"):
        t.scores()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_a_rejected_batch_leaves_the_state_unchanged(backend, rng):
    good = torch.from_numpy(rng.standard_normal((5000, 2, 3, 3)))
    q = fd.TopQuantile(2, backend=backend)
    q.add(good[:2500])
    before = q.state_dict()
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        bad = good[2500:].clone()
        bad[7, 1, 2, 0] = bad_value
        with pytest.raises(ValueError, match=r"in unit\(s\) 1;"):
            q.add(bad)
        after = q.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in ("counts", "floor", "min_max", "kept_values"))
    q.add(good[2500:])
    want = numpy_thresholds(good.transpose(0, 1).reshape(2, -1).T.numpy(), 0.005, "linear")
    np.testing.assert_array_equal(q.thresholds().numpy(), want)


def test_a_further_pass_over_different_data_is_an_error(rng):
    v = np.concatenate([rng.standard_normal((500, 1)) + 50, rng.standard_normal((199500, 1))])
    q = fd.TopQuantile(1)
    for b in torch.from_numpy(v).split(10000):
        q.add(b)
    q.new_pass()
    q.add(torch.from_numpy(v[:-5]))
    with pytest.raises(RuntimeError, match="saw 199995 values per unit but the first pass saw 200000"):
        q.thresholds()


# ---- a declared total: one pass for any order of the data
def ordered(v: np.ndarray, order: str, rng) -> np.ndarray:
    """v (n, K) rearranged row-wise or unit by unit into an adversarial order."""
    n = v.shape[0]
    if order == "ascending":
        return np.sort(v, axis=0)
    if order == "descending":
        return -np.sort(-v, axis=0)
    if order == "bright_first":      # a few bright rows (images) at the start
        w = v.copy()
        w[:max(1, n // 200)] += 50
        return w
    if order == "blocks":            # blocks of rows, the brightest blocks first
        blocks = np.array_split(np.arange(n), 7)
        by_mean = sorted(blocks, key=lambda b: -v[b].mean())
        return v[np.concatenate(by_mean)]
    if order == "ties":
        return np.round(v)
    if order == "zeros":
        return np.zeros_like(v)
    return v[rng.permutation(n)]


ORDERS = ("shuffled", "ascending", "descending", "bright_first", "blocks", "ties", "zeros")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("method", METHODS)
def test_a_declared_total_reads_every_order_in_one_pass(backend, rng, method, order):
    n = 3000
    v = ordered(np.concatenate([rng.standard_normal((n, 2)), rng.standard_normal((n, 1)) * 1e-3 + 1.0,
                                np.maximum(rng.standard_normal((n, 1)), 0)], axis=1), order, rng)
    quantile = 0.1  # r = 300 values: the margin rule's + 64 would hide a too-high floor at 0.005
    want = numpy_thresholds(v, quantile, method)
    i = order_statistics(n, 1 - quantile, method)[0]
    lowest_needed = torch.from_numpy(np.sort(v, axis=0)[i])       # the least order statistic read
    q = fd.TopQuantile(4, quantile, method, backend=backend, total_values=n)
    for b in torch.tensor_split(torch.from_numpy(v), uneven_cuts(rng, n)):
        q.add(b)
        assert bool((q.floor_values().cpu() <= lowest_needed).all())  # the invariant the docstring proves
    assert not q.needs_pass and q.passes == 1
    np.testing.assert_array_equal(q.thresholds().numpy(), want)
    today = stream(torch.from_numpy(v), uneven_cuts(rng, n), backend, quantile, method)  # total unknown
    assert torch.equal(q.thresholds(), today.thresholds())


def test_one_image_and_the_drifting_stream_in_one_pass(backend, rng):
    one = torch.from_numpy(rng.standard_normal((1, 3, 5, 5)))
    q = fd.TopQuantile(3, method="hazen", backend=backend, total_values=25)
    q.add(one)
    want = numpy_thresholds(one.transpose(0, 1).reshape(3, -1).T.numpy(), 0.005, "hazen")
    np.testing.assert_array_equal(q.thresholds().numpy(), want)
    v = np.concatenate([rng.standard_normal((500, 3)) + 50, rng.standard_normal((200000, 3))])  # as above
    q = fd.TopQuantile(3, backend=backend).expect(v.shape[0])
    for b in torch.from_numpy(v).split(10000):
        q.add(b)
    assert not q.needs_pass and q.passes == 1
    np.testing.assert_array_equal(q.thresholds().numpy(), numpy_thresholds(v, 0.005, "linear"))


def test_a_stream_longer_than_declared_is_refused_and_a_shorter_one_stays_exact(backend, rng):
    v = torch.from_numpy(-np.sort(-rng.standard_normal((6000, 2)), axis=0))
    q = fd.TopQuantile(2, backend=backend, total_values=5000)
    q.add(v[:4000])
    before = q.state_dict()
    with pytest.raises(ValueError, match=r"brings 6000 values per unit, more than total_values=5000"):
        q.add(v[4000:])
    assert all(torch.equal(before[k], q.state_dict()[k]) for k in ("counts", "floor", "kept_values"))
    short = fd.TopQuantile(2, backend=backend, total_values=10 ** 6)
    for b in v.split(700):
        short.add(b)
    assert not short.needs_pass
    np.testing.assert_array_equal(short.thresholds().numpy(), numpy_thresholds(v.numpy(), 0.005, "linear"))


def test_shards_declaring_the_global_total_merge_into_one_pass(backend, rng):
    v = -np.sort(-adversarial_units(rng, 30000), axis=0)      # the first shard holds every large value
    shards = np.array_split(v, [1000, 21000])
    parts = []
    for s in shards:
        q = fd.TopQuantile(8, method="hazen", backend=backend, total_values=v.shape[0])
        for b in torch.from_numpy(s).split(777):
            q.add(b)
        parts.append(q)
    merged = fd.TopQuantile(8, method="hazen", backend=backend)   # an empty state takes the shards' total
    for p in parts:
        merged.merge(p)
    assert merged.total_values == v.shape[0] and not merged.needs_pass
    np.testing.assert_array_equal(merged.thresholds().numpy(), numpy_thresholds(v, 0.005, "hazen"))
    own = fd.TopQuantile(8, method="hazen", backend=backend, total_values=len(shards[0]))
    own.add(torch.from_numpy(shards[0]))
    with pytest.raises(ValueError, match=r"declared total_values=30000 and 1000; every shard declares the global"):
        merged.merge(own)
    with pytest.raises(ValueError, match=r"merged shards hold 31000 values per unit, more than total_values=30000"):
        merged.merge(parts[0])


def test_the_state_carries_the_total(backend, rng):
    v = torch.from_numpy(rng.standard_normal((9000, 4)))
    q = fd.TopQuantile(4, backend=backend, total_values=9000)
    q.add(v[:4000])
    state = q.state_dict()
    assert state["total_values"] == 9000
    restored = fd.TopQuantile.from_state_dict(state, backend=backend)
    assert restored.total_values == 9000 and restored.num_values == 4000
    restored.add(v[4000:])
    assert not restored.needs_pass
    np.testing.assert_array_equal(restored.thresholds().numpy(), numpy_thresholds(v.numpy(), 0.005, "linear"))
    with pytest.raises(ValueError, match="state has total_values=9000, this TopQuantile has 8000"):
        fd.TopQuantile(4, total_values=8000).load_state_dict(state)
    unknown = fd.TopQuantile(4).state_dict()
    assert unknown["total_values"] is None and fd.TopQuantile.from_state_dict(unknown).total_values is None
    with pytest.raises(RuntimeError, match=r"expect\(\) must come before the first add"):
        restored.expect(10000)
    with pytest.raises(ValueError, match="total_values must be a positive int"):
        fd.TopQuantile(4, total_values=0)


def test_a_declared_total_keeps_fewer_values_than_the_margin(rng):
    v = torch.from_numpy(rng.standard_normal((200000, 16)).astype(np.float32))
    kept = {}
    for total in (None, 200000):
        q = fd.TopQuantile(16, total_values=total)
        for b in v.split(20000):
            q.add(b)
        kept[total] = q.state_dict()["kept_values"].numel() / 16     # compacted: the end state
    assert 0.005 * 200000 <= kept[200000] < 1.5 * 0.005 * 200000 <= kept[None]
