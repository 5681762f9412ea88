"""The permuted control in the tally's kernel call (ScoreParams' ctl_ fields, Tally.add(control=...)):
bit for bit the two separate tallies it replaces, on every backend, and one kernel call where the
kernels run."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.compat.pillow import kernel_tables
from fastdissect.engine.controls import PermutedControl, derangement
from fastdissect.kernels import dispatch, ext
from test_dispatch import score_params

UNIONS = ("global", "netdissect", "lite")


def _masks(gen, n, h, w, c, *, empty=()):
    """Pixel labels of two planes (0 = none) and image-level labels; images in `empty` have none."""
    lab = torch.randint(0, c, (n, 2, h, w), generator=gen)
    lab[torch.rand(lab.shape, generator=gen) > 0.6] = 0
    image = [[int(torch.randint(1, c, (1,), generator=gen))] for _ in range(n)]
    for i in empty:
        lab[i], image[i] = 0, []
    return fd.pack_masks(labels=lab, image_labels=image, num_concepts=c)


def cases():
    """(name, activations, masks, control masks): random and adversarial inputs."""
    gen = torch.Generator().manual_seed(7)
    relu = torch.relu(torch.randn(6, 9, 7, 7, generator=gen))
    m56 = _masks(gen, 6, 56, 56, 12)
    yield "random ReLU 7x7 -> 56x56", relu, m56, m56.take(derangement(6, 1))
    ints = torch.randint(-3, 6, (5, 5, 5, 3), generator=gen).float()  # integer maps: ties at T
    m = _masks(gen, 5, 37, 29, 10)
    yield "integer maps, ties at T, odd 5x3 -> 37x29", ints, m, m.take(derangement(5, 2))
    m = _masks(gen, 4, 28, 28, 8)
    yield "all-zero ReLU maps", torch.zeros(4, 4, 7, 7), m, m.take(derangement(4, 3))
    many = _masks(gen, 3, 9, 13, 7)
    yield "one image, 1x1 map", torch.rand(1, 3, 1, 1, generator=gen), many[:1], many.take(torch.tensor([2]))
    yield "non-contiguous float16", relu.half().permute(0, 1, 3, 2), m56, m56.take(derangement(6, 4))
    yield "bfloat16", relu.bfloat16(), m56, m56.take(derangement(6, 5))
    m = _masks(gen, 6, 20, 20, 9, empty=(1, 4))
    yield "images without labels", torch.randn(6, 4, 5, 5, generator=gen), m, m.take(derangement(6, 6))
    m = _masks(gen, 3, 5, 5, 6)
    yield "downsampling 9x9 -> 5x5", torch.randn(3, 4, 9, 9, generator=gen), m, m.take(derangement(3, 7))


CASES = list(cases())


def _tallies(acts, masks, union, backend, thresholds=None):
    k, c = acts.shape[1], masks.num_concepts
    t = fd.thresholds(acts.float(), quantile=0.2) if thresholds is None else thresholds
    cats = None if union == "global" else torch.arange(c) % 3
    return [fd.Tally(k, c, t, union=union, categories=cats, backend=backend) for _ in range(2)]


def _tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _assert_same_state(a: fd.Tally, b: fd.Tally):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["num_images"] == sb["num_images"]
    ta, tb = _tensors(sa), _tensors(sb)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.fixture
def kernel_calls(monkeypatch):
    """The score kernel calls made, and whether each carried a control."""
    calls, real = [], dispatch.tally_batch

    def counting(*args, **kwargs):
        calls.append(kwargs.get("control") is not None)
        return real(*args, **kwargs)
    monkeypatch.setattr(dispatch, "tally_batch", counting)
    return calls


@pytest.mark.parametrize("union", UNIONS)
@pytest.mark.parametrize("name, acts, masks, control_masks", CASES, ids=[c[0] for c in CASES])
def test_one_call_equals_two_tallies_and_the_torch_reference(backend, union, name, acts, masks, control_masks,
                                                             kernel_calls):
    tally, control = _tallies(acts, masks, union, backend)
    tally.add(acts, masks, control=(control, control_masks))
    # One kernel call carrying the control where the kernels run; the torch backend makes two.
    assert kernel_calls == ([False, False] if backend == "torch" else [True])
    separate = _tallies(acts, masks, union, backend, tally.thresholds)
    separate[0].add(acts, masks)
    separate[1].add(acts, control_masks)
    reference = _tallies(acts, masks, union, "torch", tally.thresholds)  # the independent formulas
    reference[0].add(acts.double(), masks)
    reference[1].add(acts.double(), control_masks)
    for mine, theirs, ref in zip((tally, control), separate, reference):
        _assert_same_state(mine, theirs)
        _assert_same_state(mine, ref)
    # Not vacuous: the control saw masks and counted something different from the labels' tally.
    if float(acts.float().max()) > 0 and name != "one image, 1x1 map":
        assert not torch.equal(tally.scores().intersection, control.scores().intersection)


def test_batches_accumulate_as_one_call(backend):
    _, acts, masks, _ = CASES[0]
    perm = derangement(6, 0)
    tally, control = _tallies(acts, masks, "netdissect", backend)
    pc = PermutedControl(control, perm, masks)
    for first in (0, 2, 5):
        stop = {0: 2, 2: 5, 5: 6}[first]
        pc.add_with(tally, acts[first:stop], masks[first:stop], first)
    whole = _tallies(acts, masks, "netdissect", backend, tally.thresholds)
    whole[0].add(acts, masks)
    whole[1].add(acts, masks.take(perm))
    _assert_same_state(tally, whole[0])
    _assert_same_state(control, whole[1])


def test_masks_moved_to_another_device_hold_only_the_rows_they_use():
    from fastdissect.engine import controls

    _, acts, masks, _ = CASES[6]  # with unlabeled images and whole-image labels
    pc = PermutedControl(fd.Tally(4, masks.num_concepts, [0.0] * 4), derangement(6, 0), masks)
    shared = pc.paired_masks(2, 3)
    compact = controls._compact(shared)
    assert shared.words.data_ptr() == masks.words.data_ptr()  # on the same device: nothing copied
    assert len(compact.words) == int((shared.mask_rows >= 0).sum()) < len(masks.words)
    assert torch.equal(compact.to_dense(), shared.to_dense())
    moved = pc.paired_masks(2, 3, device="meta")
    assert moved.device.type == "meta" and moved.words.shape == compact.words.shape


def test_pillow_resampling_counts_the_control_as_a_second_call():
    gen = torch.Generator().manual_seed(3)
    acts = torch.relu(torch.randn(5, 6, 7, 7, generator=gen))
    masks = _masks(gen, 5, 45, 41, 9, empty=(2,))
    control_masks = masks.take(derangement(5, 0))
    t = fd.thresholds(acts, quantile=0.3)
    tables = kernel_tables(7, 7, 45, 41)
    cats, G = torch.arange(9) % 3, 3

    def accumulators():
        z = lambda *shape: torch.zeros(*shape, dtype=torch.int64)  # noqa: E731
        return z(6, 9), z(6), z(6, G), z(6, 9)

    for exhaustive in (False, True):
        one, ctl = accumulators(), accumulators()
        dispatch.tally_batch("cpu", acts, masks, t, "lite", cats, G, *one[:3], image_hits=one[3], pillow=tables,
                             exhaustive=exhaustive, control=dispatch.ControlTallies(control_masks, *ctl))
        two = [accumulators() for _ in range(2)]
        for m, acc in zip((masks, control_masks), two):
            dispatch.tally_batch("cpu", acts, m, t, "lite", cats, G, *acc[:3], image_hits=acc[3], pillow=tables,
                                 exhaustive=exhaustive)
        for mine, theirs in zip((one, ctl), two):
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
        assert int(one[0].sum()) > 0 and not torch.equal(one[0], ctl[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations_are_refused_as_by_the_plain_tally(backend, bad):
    _, acts, masks, control_masks = CASES[0]
    acts = acts.clone()
    acts[2, 3, 1, 1] = bad
    tally, control = _tallies(torch.relu(torch.randn(6, 9, 7, 7)), masks, "global", backend)
    plain, _ = _tallies(torch.relu(torch.randn(6, 9, 7, 7)), masks, "global", backend, tally.thresholds)
    if backend == "cuda_emu":  # counted on the device, reported when the results are read
        tally.add(acts, masks, control=(control, control_masks))
        plain.add(acts, masks)
        for t in (tally, control, plain):
            with pytest.raises(ValueError, match=r"NaN or inf in unit\(s\) 3 "):
                t.scores()
        return
    with pytest.raises(ValueError) as expected:
        plain.add(acts, masks)
    with pytest.raises(ValueError) as got:
        tally.add(acts, masks, control=(control, control_masks))
    assert str(got.value) == str(expected.value)
    assert tally.num_images == control.num_images == 0


def test_tallies_that_cannot_share_a_call_are_added_separately(kernel_calls):
    _, acts, masks, control_masks = CASES[0]
    tally, _ = _tallies(acts, masks, "global", "cpu")
    _, other = _tallies(acts, masks, "global", "cpu", tally.thresholds + 0.25)  # other unit masks
    tally.add(acts, masks, control=(other, control_masks))
    assert kernel_calls == [False, False]
    separate = _tallies(acts, masks, "global", "cpu", other.thresholds)[1]
    separate.add(acts, control_masks)
    _assert_same_state(other, separate)


def test_bad_control_arguments_are_named():
    _, acts, masks, control_masks = CASES[0]
    tally, control = _tallies(acts, masks, "global", "cpu")
    with pytest.raises(TypeError, match=r"control must be a \(Tally, masks\) pair"):
        tally.add(acts, masks, control=control)
    with pytest.raises(ValueError, match="another Tally"):
        tally.add(acts, masks, control=(tally, control_masks))
    small = fd.Tally(3, masks.num_concepts, [0.0] * 3)
    with pytest.raises(ValueError, match="control Tally has 3 units"):
        tally.add(acts, masks, control=(small, control_masks))
    with pytest.raises(ValueError, match="5"):
        tally.add(acts, masks, control=(control, control_masks[:5]))
    with pytest.raises(ValueError, match="outside the derangement of 6 images"):
        PermutedControl(control, derangement(6), masks).add_with(tally, acts, masks, first_image=3)
    assert tally.num_images == control.num_images == 0


def _score_params(keep):
    """test_dispatch's valid ScoreParams, with a control mask set: its own masks again, its own outputs."""
    C = ext.extension()
    p = score_params(C, keep)
    out = [torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)]
    keep += out
    p.ctl_offsets, p.ctl_concept_ids, p.ctl_mask_rows, p.ctl_words = p.offsets, p.concept_ids, p.mask_rows, p.words
    p.ctl_intersection, p.ctl_unit_area = out[0].data_ptr(), out[1].data_ptr()
    return C, p


@pytest.mark.parametrize("field, value, message", [
    ("ctl_offsets", 0, r"score: params\.ctl_offsets .* is required"),
    ("ctl_intersection", 0, r"score: params\.ctl_intersection is required"),
    ("ctl_unit_area", 0, r"score: params\.ctl_unit_area is required"),
    ("ctl_concept_ids", 0, r"score: params\.ctl_concept_ids is required"),
    ("ctl_mask_rows", 0, r"score: params\.ctl_mask_rows is required"),
    ("ctl_image_hits", 8, r"score: params\.ctl_image_hits needs params\.image_hits"),
])
def test_score_check_names_the_bad_control_field(field, value, message):
    keep = []
    C, p = _score_params(keep)
    C.check_score(p)  # valid as built
    setattr(p, field, value)
    with pytest.raises(ValueError, match=message):
        C.check_score(p)


def test_score_check_names_the_control_union_and_scratch_fields():
    keep = []
    C, p = _score_params(keep)
    cats = torch.zeros(3, dtype=torch.int64)
    cat_area = torch.zeros(1, 1, dtype=torch.int64)
    keep += [cats, cat_area]
    p.union_mode, p.categories, p.G, p.unit_category_area = 2, cats.data_ptr(), 1, cat_area.data_ptr()
    with pytest.raises(ValueError, match=r"score: params\.ctl_unit_category_area is required"):
        C.check_score(p)
    p.ctl_unit_category_area = cat_area.data_ptr()
    C.check_score(p)
    s = C.ScoreScratch()
    scratch = [torch.zeros(16, dtype=torch.int64) for _ in range(4)]
    keep += scratch
    s.map_scale, s.taps, s.map_area, s.hit = (t.data_ptr() for t in scratch)
    with pytest.raises(ValueError, match=r"score \(CUDA kernels\): params\.scratch\.ctl_hit is required"):
        C.check_score_scratch(p, s)


def test_emulated_launches_follow_the_plan_with_the_control():
    gen = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(6, 9, 5, 5, generator=gen))
    masks = _masks(gen, 6, 16, 16, 40)
    control_masks = masks.take(derangement(6, 0))
    tally, control = _tallies(acts, masks, "lite", "cuda_emu")
    tally.add(acts, masks, control=(control, control_masks))
    log = dispatch.emu_last_launches()
    assert log["launched"] == log["planned"]
    hits = [launch for launch in log["launched"] if launch["kernel"] == "score_image_hits_kernel"]
    items = 9 * (int(masks.offsets[-1]) + int(control_masks.offsets[-1]))  # both sets' (unit, entry) flags
    assert items > 2 * 256 and hits[0]["grid"] == -(-items // 256)


def _dissect(concepts, two_calls: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if two_calls:  # the way before the control rode along: a second Tally.add of the deranged masks
            patch.setattr(PermutedControl, "add_with",
                          lambda self, tally, act, masks, first: (tally.add(act, masks), self.add(act, first)))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                                    torch.nn.ReLU())
        return fd.dissect(model, ["1", "3"], concepts, controls=("permuted",), batch_size=8, verbose=False,
                          image_size=(64, 64))


def test_dissect_with_the_permuted_control_is_unchanged(tmp_path, monkeypatch, kernel_calls):
    concepts = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "set", n_images=24, seed=3, image_size=64,
                                                      label_size=32))
    ours = _dissect(concepts, False, monkeypatch)
    assert kernel_calls and all(kernel_calls)  # every tally call carried its control
    kernel_calls.clear()
    theirs = _dissect(concepts, True, monkeypatch)
    for name in ("1", "3"):
        for field in ("intersection", "union", "iou", "unit_area", "concept_area", "image_hits", "concept_images"):
            for a, b in ((ours[name].scores, theirs[name].scores), (ours[name].control, theirs[name].control)):
                assert torch.equal(getattr(a, field), getattr(b, field)), (name, field)
        assert int(ours[name].control.intersection.sum()) > 0
        assert not torch.equal(ours[name].control.intersection, ours[name].scores.intersection)
    assert kernel_calls and not any(kernel_calls)  # the reference really took the two-call way
    assert np.isfinite(ours["3"].scores.iou.numpy()).all()
