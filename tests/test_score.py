"""fd.score / fd.Tally against the independent numpy reference (tests/reference.py)."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from conftest import exact_acts, random_labels
from fastdissect.kernels import dispatch
import reference as ref


def assert_matches(scores, expected):
    for key in ("intersection", "union", "unit_area", "concept_area", "image_hits", "concept_images"):
        np.testing.assert_array_equal(getattr(scores, key).cpu().numpy(), expected[key], err_msg=key)
    np.testing.assert_array_equal(scores.iou.cpu().numpy(), expected["iou"])


def run_case(acts, dense, thr, backend, union="global", categories=None):
    s = fd.score(acts, dense, thresholds=thr, union=union, categories=categories, backend=backend)
    expected = ref.tally(acts.float().numpy() if acts.dtype == torch.bfloat16 else acts.numpy(),
                         dense.numpy(), thr.numpy(), union, None if categories is None else categories.numpy())
    assert_matches(s, expected)
    return s


@pytest.mark.parametrize("union", ["global", "netdissect", "lite"])
@pytest.mark.parametrize("geometry", [(7, 7, 56, 56), (4, 8, 32, 32), (7, 7, 112, 112)])
def test_exact_data_all_unions(backend, rng, union, geometry):
    h, w, H, W = geometry
    acts = exact_acts(rng, (3, 5, h, w))
    labels = random_labels(rng, 3, 2, H, W, 9)
    dense = torch.from_numpy(ref.dense_from_labels(labels.numpy(), [[4], [], [7, 8]], 9))
    thr = torch.tensor([2.0, 0.0, 5.0, -1.0, 8.0], dtype=torch.float64)  # thresholds sit on data values
    cats = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3])
    s = run_case(acts, dense, thr, backend, union, cats)
    assert s.intersection.sum() > 0 and s.union_mode == union


@pytest.mark.parametrize("geometry", [(5, 3, 17, 11), (1, 1, 9, 9), (3, 7, 3, 7), (9, 6, 13, 8), (20, 30, 7, 5),
                                      (7, 7, 113, 113)])
def test_random_data_odd_sizes(backend, rng, geometry):
    """Non-dyadic scales, upsampling and downsampling: the same float64 formula gives the same bits."""
    h, w, H, W = geometry
    acts = torch.from_numpy(rng.standard_normal((2, 4, h, w)).astype(np.float32))
    dense = torch.from_numpy(rng.random((2, 5, H, W)) > 0.6)
    thr = torch.from_numpy(rng.standard_normal(4) * 0.5)
    run_case(acts, dense, thr, backend)


def test_ties_at_threshold_are_off(backend, rng):
    """A constant map equal to T lights nothing (strict >), whatever rounding the blend does."""
    acts = torch.full((2, 3, 7, 7), 0.1, dtype=torch.float64)
    acts[1, 2] = torch.from_numpy(rng.choice([0.1, 0.3], size=(7, 7)))
    dense = torch.ones(2, 2, 24, 24, dtype=torch.bool)
    s = run_case(acts, dense, torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64), backend)
    assert s.unit_area[:2].tolist() == [0, 0]


def test_blend_rounding_above_threshold_is_not_skipped(backend):
    """A constant map equal to T whose float64 blend rounds above T in places: those pixels are on
    by the formula, so the kernel may not skip the map just because no source exceeds T."""
    t = float.fromhex("0x1.3e2a49c00db3dp+0")
    acts = torch.full((1, 1, 2, 6), t, dtype=torch.float64)
    dense = torch.ones(1, 1, 23, 27, dtype=torch.bool)
    s = run_case(acts, dense, torch.tensor([t], dtype=torch.float64), backend)
    assert s.unit_area.item() > 0  # the reference says 69 pixels round above T


def test_threshold_a_hair_below_constant_map(backend):
    """Sources one ulp below T must still be evaluated: the blend may round above T."""
    t = 0.3
    below = np.nextafter(t, -np.inf)
    acts = torch.full((1, 2, 3, 3), below, dtype=torch.float64)
    acts[0, 1, 1, 1] = t
    dense = torch.ones(1, 1, 17, 17, dtype=torch.bool)
    run_case(acts, dense, torch.tensor([t, t], dtype=torch.float64), backend)


@pytest.mark.parametrize("geometry", [(7, 7, 112, 112), (5, 3, 37, 23), (2, 9, 31, 64), (2, 2, 5, 2000)])
def test_maps_within_rounding_of_threshold(backend, rng, geometry):
    """Sources a few ulps around T: along a row the computed blend is not monotone, so a pixel beyond
    T is no proof that the rest of its run is; every pixel must still come out as the formula says."""
    h, w, H, W = geometry
    t = np.array([0.3, 1.7, 1e-300, 12345.678])
    ulps = rng.integers(-60, 61, size=(3, 4, h, w))
    acts = torch.from_numpy(t[None, :, None, None] * (1 + ulps * np.finfo(np.float64).eps))
    dense = torch.from_numpy(rng.random((3, 3, H, W)) > 0.5)
    s = run_case(acts, dense, torch.from_numpy(t), backend)
    assert 0 < s.unit_area.sum() < 3 * 4 * H * W


def test_values_beyond_float_range_and_subnormal_doubles(backend, rng):
    """The CUDA kernel screens pixels in float: maps beyond float's range must be evaluated in double,
    and subnormal doubles (0 in float) must not be decided by the screen."""
    acts = torch.from_numpy(rng.standard_normal((2, 3, 5, 4)))
    acts[:, 0] *= 1e300
    acts[:, 1] *= 1e-310
    acts[:, 2] *= 3e38  # within float's range, near its top
    dense = torch.from_numpy(rng.random((2, 3, 19, 13)) > 0.5)
    thr = torch.tensor([0.3e300, 0.2e-310, 1e38], dtype=torch.float64)
    s = run_case(acts, dense, thr, backend)
    assert (s.unit_area > 0).all()


def test_all_zero_relu_units(backend, rng):
    acts = torch.relu(exact_acts(rng, (3, 4, 7, 7)))
    acts[:, 1] = 0
    dense = torch.from_numpy(rng.random((3, 3, 28, 28)) > 0.5)
    s = run_case(acts, dense, torch.zeros(4, dtype=torch.float64), backend)
    assert s.unit_area[1] == 0 and s.iou[1].eq(0).all()


def test_one_image_1x1_map(backend):
    acts = torch.tensor([[[[3.0]], [[1.0]]]])
    dense = torch.zeros(1, 2, 5, 5, dtype=torch.bool)
    dense[0, 0, 1:3] = True
    s = run_case(acts, dense, torch.tensor([2.0, 2.0], dtype=torch.float64), backend)
    assert s.unit_area.tolist() == [25, 0] and s.intersection[0, 0] == 10


def test_absent_and_whole_image_concepts(backend, rng):
    acts = exact_acts(rng, (3, 3, 7, 7))
    labels = random_labels(rng, 3, 1, 28, 28, 5)
    labels[labels == 2] = 0  # concept 2 never appears
    dense = torch.from_numpy(ref.dense_from_labels(labels.numpy(), [[5], [5, 6], []], 7))
    s = run_case(acts, dense, torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64), backend)
    assert s.concept_area[2] == 0 and s.intersection[:, 2].eq(0).all()
    assert s.concept_area[5] == 2 * 28 * 28
    # image-level concept: intersection = the unit's mask area on the images it labels
    packed = fd.pack_masks(labels=labels, image_labels=[[5], [5, 6], []], num_concepts=7)
    assert (packed.mask_rows == -1).sum() == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_inputs_read_natively(backend, rng, dtype):
    acts = (exact_acts(rng, (2, 4, 7, 7)) / 4).to(dtype)
    dense = torch.from_numpy(rng.random((2, 3, 28, 28)) > 0.5)
    thr = torch.tensor([0.25, 0.5, 0.0, 1.0], dtype=torch.float64)
    run_case(acts, dense, thr, backend)


def test_non_contiguous_inputs(backend, rng):
    base = exact_acts(rng, (7, 7, 4, 3))
    acts = base.permute(2, 3, 0, 1)[::2]  # (2, 3, 7, 7), every stride unusual
    assert not acts.is_contiguous()
    dense_base = torch.from_numpy(rng.random((28, 28, 2, 4)) > 0.5)
    dense = dense_base.permute(2, 3, 0, 1)
    thr = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    expected = ref.tally(acts.contiguous().numpy(), dense.contiguous().numpy(), thr.numpy())
    assert_matches(fd.score(acts, dense, thresholds=thr, backend=backend), expected)


def test_backends_identical_on_random_float32(rng):
    acts = torch.from_numpy(rng.standard_normal((6, 32, 7, 7)).astype(np.float32))
    masks = fd.pack_masks(labels=random_labels(rng, 6, 2, 37, 41, 20), num_concepts=20)
    cats = torch.from_numpy(rng.integers(0, 3, 20))
    for union in ("global", "netdissect", "lite"):
        a = fd.score(acts, masks, union=union, categories=cats, backend="cpu")
        b = fd.score(acts, masks, union=union, categories=cats, backend="torch")
        for key in ("intersection", "union", "unit_area", "concept_area", "thresholds"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_default_thresholds_are_exact_quantiles(backend, rng):
    acts = torch.from_numpy(rng.standard_normal((5, 3, 7, 7)).astype(np.float32))
    dense = torch.from_numpy(rng.random((5, 2, 14, 14)) > 0.5)
    s = fd.score(acts, dense, backend=backend)
    for k in range(3):
        assert s.thresholds[k].item() == np.quantile(acts[:, k].double().numpy().ravel(), 1 - 0.005)
    assert_matches(s, ref.tally(acts.numpy(), dense.numpy(), s.thresholds.numpy()))


def test_label_planes_equal_dense_masks(backend, rng):
    labels = random_labels(rng, 4, 3, 16, 16, 12)
    image_labels = [[11], [], [3, 11], [1]]
    dense = torch.from_numpy(ref.dense_from_labels(labels.numpy(), image_labels, 12))
    packed = fd.pack_masks(labels=labels, image_labels=image_labels, num_concepts=12)
    assert torch.equal(packed.to_dense(), dense)
    acts = exact_acts(rng, (4, 3, 4, 4))
    thr = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    a = fd.score(acts, packed, thresholds=thr, backend=backend)
    assert_matches(a, ref.tally(acts.numpy(), dense.numpy(), thr.numpy()))


@pytest.mark.parametrize("union", ["global", "lite"])
def test_streaming_and_merge_equal_one_shot(backend, rng, union):
    acts = exact_acts(rng, (9, 4, 7, 7))
    masks = fd.pack_masks(labels=random_labels(rng, 9, 2, 28, 28, 10), image_labels=[[9]] * 9, num_concepts=10)
    cats = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    thr = torch.tensor([1.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    one = fd.score(acts, masks, thresholds=thr, union=union, categories=cats, backend=backend)
    stream = fd.Tally(4, 10, thr, union=union, categories=cats, backend=backend)
    for lo, hi in [(0, 1), (1, 5), (5, 9)]:
        stream.add(acts[lo:hi], masks[lo:hi])
    shard_a = fd.Tally(4, 10, thr, union=union, categories=cats, backend=backend)
    shard_b = fd.Tally(4, 10, thr, union=union, categories=cats, backend=backend)
    shard_a.add(acts[:4], masks[:4])
    shard_b.add(acts[4:], masks[4:])
    restored = fd.Tally(4, 10, thr, union=union, categories=cats)
    restored.load_state_dict(shard_a.state_dict())
    restored.merge(shard_b)
    for other in (stream.scores(), restored.scores()):
        for key in ("intersection", "union", "iou", "unit_area", "concept_area"):
            assert torch.equal(getattr(one, key), getattr(other, key)), key
        assert other.num_images == 9
    # scores() is a snapshot: adding more images changes the Tally, not what it returned before
    snapshot = stream.scores()
    stream.add(acts[:1], masks[:1])
    for key in ("intersection", "unit_area", "concept_area"):
        assert torch.equal(getattr(snapshot, key), getattr(one, key)), key


def test_scores_of_loaded_tallies_whatever_backend_was_asked(rng):
    """Reading scores needs no kernel: a Tally meant for the GPU reads a state loaded on the CPU."""
    acts = exact_acts(rng, (3, 4, 7, 7))
    masks = fd.pack_masks(labels=random_labels(rng, 3, 2, 28, 28, 10), image_labels=[[9]] * 3, num_concepts=10)
    cats = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    thr = torch.tensor([1.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    expected = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats)
    for backend in ("cuda", "torch", "cuda_emu"):
        tally = fd.Tally(4, 10, thr, union="lite", categories=cats, backend=backend)
        tally.load_state_dict(_tally_state(acts, masks, thr, cats))
        s = tally.scores()
        for key in ("intersection", "union", "iou", "unit_area", "concept_area"):
            assert torch.equal(getattr(s, key), getattr(expected, key)), (backend, key)


def _tally_state(acts, masks, thr, cats):
    t = fd.Tally(4, 10, thr, union="lite", categories=cats, backend="cpu")
    t.add(acts, masks)
    return t.state_dict()


def test_thread_count_does_not_change_results(rng):
    acts = torch.from_numpy(rng.standard_normal((8, 37, 7, 7)).astype(np.float32))
    masks = fd.pack_masks(labels=random_labels(rng, 8, 2, 56, 56, 30), num_concepts=30)
    cats = torch.from_numpy(rng.integers(0, 4, 30))
    old = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(fd.score(acts, masks, union="lite", categories=cats, backend="cpu"))
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        assert torch.equal(r.intersection, results[0].intersection)
        assert torch.equal(r.union, results[0].union)


def test_formula_equals_torch_interpolate_on_exact_data(rng):
    a = torch.from_numpy(rng.integers(-8, 8, size=(2, 3, 7, 7)).astype(np.float64))
    for size in [(112, 112), (56, 28), (14, 7)]:
        t = torch.nn.functional.interpolate(a, size=size, mode="bilinear", align_corners=False)
        ours = np.stack([[ref.upsample(a[n, k].numpy(), *size) for k in range(3)] for n in range(2)])
        np.testing.assert_array_equal(ours, t.numpy())


def test_formula_close_to_torch_interpolate_on_random_data(rng):
    a = torch.from_numpy(rng.standard_normal((1, 2, 5, 9)))
    t = torch.nn.functional.interpolate(a, size=(17, 23), mode="bilinear", align_corners=False)
    ours = np.stack([ref.upsample(a[0, k].numpy(), 17, 23) for k in range(2)])
    np.testing.assert_allclose(ours, t[0].numpy(), rtol=0, atol=1e-14)


def test_best_concept(rng):
    acts = torch.zeros(1, 1, 2, 2)
    acts[0, 0, 0, 0] = 1.0
    dense = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    dense[0, 2, :4, :4] = True
    concept, iou = fd.score(acts, dense, thresholds=[0.5]).best()
    assert concept.tolist() == [2] and iou.item() > 0.3


@pytest.mark.parametrize("geometry", [(6, 9, 67, 130), (4, 4, 64, 64), (3, 2, 65, 129)])
def test_wide_regions_and_word_boundaries(backend, rng, geometry):
    """Large on-regions (whole runs decided at their ends) and rows that straddle 64-bit words."""
    h, w, H, W = geometry
    acts = torch.from_numpy(rng.standard_normal((1, 5, h, w)) * 3)
    dense = torch.from_numpy(rng.random((1, 2, H, W)) > 0.5)
    thr = torch.tensor([-2.0, -0.5, 0.0, 0.7, 2.5], dtype=torch.float64)
    s = run_case(acts, dense, thr, backend)
    assert s.unit_area[0] > H * W // 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_precision_value_converts_exactly(backend, dtype):
    """1x1 maps at 1x1 labels: M = a > T, so unit areas count values above each threshold, over all
    finite bit patterns of the type (subnormals, signed zeros, extremes)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    values = values[torch.isfinite(values)]
    if backend == "torch":  # its per-image Python loop makes all 63K images slow: every 7th pattern
        values = values[::7]
    probes = torch.tensor([0.0, -0.0, 1e-7, -1e-7, 6e-8, 1.0, -65504.0, 1e30, 0.333, -2.5e-38], dtype=torch.float64)
    probes = probes[probes.abs() < (65504 if dtype == torch.float16 else 3e38)]
    acts = values.reshape(-1, 1, 1, 1).expand(-1, probes.shape[0], 1, 1)  # stride 0 over units
    masks = torch.ones(values.shape[0], 1, 1, 1, dtype=torch.bool)
    s = fd.score(acts, masks, thresholds=probes, backend=backend)
    expected = [(values.double() > t).sum().item() for t in probes.tolist()]
    assert s.unit_area.tolist() == expected


@pytest.mark.parametrize("block_bytes", [1, 3 * 5 * 9 * 7 * 2, 1 << 30])
def test_dense_packing_round_trips_across_blocks(rng, monkeypatch, block_bytes):
    import fastdissect.core.masks as masks_module

    monkeypatch.setattr(masks_module, "PACK_BLOCK_BYTES", block_bytes)
    dense = torch.from_numpy(rng.random((7, 3, 5, 9)) > 0.7)
    dense[2] = False                 # an image with no concept
    dense[4, 1] = True               # a mask covering the whole image is stored without bits
    packed = fd.pack_masks(dense)
    assert torch.equal(packed.to_dense(), dense)
    assert packed.offsets.tolist()[2] == packed.offsets.tolist()[3]
    assert torch.equal(packed[3:6].to_dense(), dense[3:6])


@pytest.mark.parametrize("union", ["global", "netdissect", "lite"])
def test_many_concepts_per_image_and_masks_of_many_words(backend, rng, union):
    """150 concepts in every image and 130 x 130 masks (265 words): the CUDA words kernel counts
    an image's entries in several rounds through shared memory and a map's words in several passes."""
    acts = torch.from_numpy(rng.standard_normal((2, 3, 9, 9)))
    dense = torch.from_numpy(rng.random((2, 150, 130, 130)) > 0.7)
    thr = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    cats = torch.from_numpy(rng.integers(0, 4, 150))
    s = run_case(acts, dense, thr, backend, union, cats)
    assert int(s.intersection.sum()) > 0


def test_union_default_follows_the_categories(backend, rng):
    """union=None: "netdissect" where categories are given, "global" where not (docs/api.md)."""
    acts = exact_acts(rng, (3, 4, 7, 7))
    # category 3 (concept 9) is on image 0 only: there the two unions differ
    masks = fd.pack_masks(labels=random_labels(rng, 3, 2, 28, 28, 9), image_labels=[[9], [], []], num_concepts=10)
    cats = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    thr = torch.tensor([1.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    with_cats = fd.score(acts, masks, thresholds=thr, categories=cats, backend=backend)
    netdissect = fd.score(acts, masks, thresholds=thr, union="netdissect", categories=cats, backend=backend)
    without = fd.score(acts, masks, thresholds=thr, backend=backend)
    assert with_cats.union_mode == "netdissect" and without.union_mode == "global"
    assert torch.equal(with_cats.union, netdissect.union) and torch.equal(with_cats.iou, netdissect.iou)
    assert torch.equal(without.union, fd.score(acts, masks, thresholds=thr, union="global", backend=backend).union)
    # the rule is not a coincidence of these data: the two unions differ here
    assert not torch.equal(with_cats.union, without.union)
    lite = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats, backend=backend)
    assert lite.union_mode == "lite"


def test_score_resolves_its_backend_once_and_passes_it_down(rng, monkeypatch):
    """One resolution of "auto" per call, the quantile pass included; every kernel call below
    (the union and IoU too) receives the concrete name."""
    from fastdissect.engine import scoring

    asked, union_backends = [], []
    resolve, union_and_iou = dispatch.resolve_backend, dispatch.union_and_iou

    def counting_resolve(backend, device):
        asked.append(backend)
        return resolve(backend, device)

    def recording_union(backend, *args):
        union_backends.append(backend)
        return union_and_iou(backend, *args)

    monkeypatch.setattr(dispatch, "resolve_backend", counting_resolve)
    monkeypatch.setattr(dispatch, "union_and_iou", recording_union)
    acts = exact_acts(rng, (3, 4, 7, 7))
    masks = torch.from_numpy(rng.random((3, 5, 14, 14)) > 0.5)
    want = scoring.score(acts, masks, quantile=0.1, backend="torch")
    for thresholds in (None, want.thresholds):
        asked.clear()
        union_backends.clear()
        got = scoring.score(acts, masks, thresholds=thresholds, quantile=0.1)
        assert asked.count("auto") == 1 and set(asked) <= {"auto", "cpu"}, asked
        assert union_backends == ["cpu"]
        assert torch.equal(got.iou, want.iou) and torch.equal(got.thresholds, want.thresholds)
    t = fd.Tally(4, 5, want.thresholds, backend="cuda")  # a state read on the CPU: no kernel of the GPU's
    t.load_state_dict(_tally_state_global(acts, masks, want.thresholds))
    union_backends.clear()
    assert torch.equal(t.scores().iou, want.iou) and union_backends == ["torch"]


def _tally_state_global(acts, masks, thr):
    t = fd.Tally(acts.shape[1], masks.shape[1], thr, backend="cpu")
    t.add(acts, masks)
    return t.state_dict()


def test_non_finite_messages_share_one_policy(rng):
    """The host check (CPU backends) and the device counts (the CUDA kernels, here emulated) name the
    same units, and say why the activations are refused."""
    acts = exact_acts(rng, (3, 13, 4, 4))
    bad_units = [1, 3] + list(range(4, 13))  # eleven units hold NaN: the list is cut at ten
    acts[0, bad_units, 0, 0] = float("nan")
    masks = torch.from_numpy(rng.random((3, 2, 8, 8)) > 0.5)
    thr = torch.zeros(13)
    shown = r"unit\(s\) 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, \.\.\. \(11 units\)"
    for backend in ("cpu", "torch"):
        with pytest.raises(ValueError, match=rf"activations contains NaN in {shown}; dissection needs finite"):
            fd.score(acts, masks, thresholds=thr, backend=backend)
    with pytest.raises(ValueError, match=rf"contained NaN or inf in {shown} \(counted on the device\); dissection "
                                         "needs finite activations: these results are invalid"):
        fd.score(acts, masks, thresholds=thr, backend="cuda_emu")
    with pytest.raises(ValueError, match=rf"contained NaN or inf in {shown} \(counted on the device\); dissection "
                                         "needs finite activations: these unit masks are invalid"):
        dispatch.unit_masks("cuda_emu", acts, 8, 8, thr.double())
