"""Every accumulator through the protocol of engine/accumulator.py: a run split in two shards, the
first saved (state_dict), restored (from_state_dict, through a checkpoint's safetensors encoding),
merged with the second and moved (to), must equal the unbroken run; the unbroken run is checked
against the independent numpy reference (reference.py)."""

import numpy as np
import pytest
import torch

import fastdissect as fd
import reference
from conftest import exact_acts, random_labels
from fastdissect.engine.accumulator import Accumulator
from fastdissect.engine.controls import PermutedControl, derangement
from fastdissect.engine.unit_masks import MaskLog, UnitMasks
from fastdissect.files import tensorfile

N, K, C, H, W = 12, 3, 5, 8, 8   # images, units, concepts, label size (maps are 4x4)
CATEGORIES = torch.tensor([0, 0, 1, 1, 1])
THRESHOLDS = [0.5, 2.0, 4.5]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    acts = exact_acts(rng, (N, K, 4, 4))
    dense = torch.zeros(N, C, H, W, dtype=torch.bool)
    labels = random_labels(rng, N, 1, H, W, C)[:, 0]
    for c in range(1, C):
        dense[:, c] = labels == c
    return acts, dense


def kinds(data):
    """(name, make(), add(acc, first, last)) for every accumulator, each over images [first, last)."""
    acts, dense = data
    perm = derangement(N, seed=3)
    every = fd.pack_masks(dense)
    tally = lambda: fd.Tally(K, C, THRESHOLDS, union="netdissect", categories=CATEGORIES)  # noqa: E731
    return {
        "TopQuantile": (lambda: fd.TopQuantile(K, 0.1), lambda a, i, j: a.add(acts[i:j])),
        "Tally": (tally, lambda a, i, j: a.add(acts[i:j], fd.pack_masks(dense[i:j]))),
        "TopImages": (lambda: fd.TopImages(top_k=4), lambda a, i, j: a.add(acts[i:j], torch.arange(i, j))),
        "UnitMasks": (lambda: UnitMasks(torch.tensor(THRESHOLDS), H, W), lambda a, i, j: a.add(acts[i:j], i)),
        "MaskLog": (MaskLog, lambda a, i, j: a.add(fd.pack_masks(dense[i:j]))),
        "PermutedControl": (lambda: PermutedControl(tally(), perm, every), lambda a, i, j: a.add(acts[i:j], i)),
    }


def restore(name: str, state: dict, extra: PermutedControl | None):
    """from_state_dict of the state after a checkpoint's encoding (what resume reads)."""
    state = tensorfile.loads(tensorfile.dumps({"s": state}, kind="checkpoint"), kind="checkpoint", where="test")["s"]
    cls = {"TopQuantile": fd.TopQuantile, "Tally": fd.Tally, "TopImages": fd.TopImages, "UnitMasks": UnitMasks,
           "MaskLog": MaskLog}.get(name)
    if cls is not None:
        return cls.from_state_dict(state, "cpu")
    return PermutedControl.from_state_dict(state, "cpu", perm=extra.perm, masks=extra.masks)


def observed(name: str, acc) -> dict:
    """What the accumulator gives the pipeline, as tensors."""
    if name == "TopQuantile":
        assert not acc.needs_pass
        return {"thresholds": acc.thresholds()}
    if name in ("Tally", "PermutedControl"):
        s = acc.scores()
        return {key: getattr(s, key) for key in ("intersection", "union", "unit_area", "concept_area", "image_hits",
                                                 "concept_images")}
    if name == "TopImages":
        return {"values": acc.values, "images": acc.images, "maps": acc.maps}
    if name == "UnitMasks":
        s = acc.mask_set(N)
        return {"offsets": s.offsets, "images": s.images, "words": s.words[s.rows]}
    m = acc.masks()
    return {"offsets": m.offsets, "ids": m.concept_ids, "areas": m.areas,
            "dense": m.to_dense()}


@pytest.mark.parametrize("name", ["TopQuantile", "Tally", "TopImages", "UnitMasks", "MaskLog", "PermutedControl"])
@pytest.mark.parametrize("split", [1, 5, 11])
def test_save_restore_merge_and_move_equal_the_unbroken_run(data, name, split):
    make, add = kinds(data)[name]
    whole = make()
    for i in range(0, N, 4):  # batches of another size than the shards'
        add(whole, i, min(i + 4, N))
    first, second = make(), make()
    add(first, 0, split)
    add(second, split, N)
    assert isinstance(first, Accumulator)
    resumed = restore(name, first.state_dict(), first if name == "PermutedControl" else None)
    assert type(resumed) is type(first)
    assert resumed.merge(second) is resumed
    assert resumed.to("cpu") is resumed and resumed.device == torch.device("cpu")
    want, got = observed(name, whole), observed(name, resumed)
    for key in want:
        assert torch.equal(want[key], got[key]), f"{name}.{key}"


def test_the_unbroken_runs_match_the_reference(data):
    acts, dense = data
    acc = kinds(data)
    runs = {}
    for name, (make, add) in acc.items():
        runs[name] = make()
        add(runs[name], 0, N)
    values = acts.transpose(0, 1).reshape(K, -1).double().numpy()
    np.testing.assert_array_equal(runs["TopQuantile"].thresholds().numpy(),
                                  [reference.quantile(values[k], 0.9) for k in range(K)])
    ref = reference.tally(acts.numpy(), dense.numpy(), THRESHOLDS, "netdissect", CATEGORIES.numpy())
    for key in ("intersection", "union", "unit_area", "concept_area", "image_hits", "concept_images"):
        np.testing.assert_array_equal(getattr(runs["Tally"].scores(), key).numpy(), ref[key])
    perm = runs["PermutedControl"].perm
    ref = reference.tally(acts.numpy(), dense[perm].numpy(), THRESHOLDS, "netdissect", CATEGORIES.numpy())
    np.testing.assert_array_equal(runs["PermutedControl"].scores().intersection.numpy(), ref["intersection"])
    peaks = acts.amax(dim=(2, 3)).numpy()
    want = np.stack([np.argsort(-peaks[:, k], kind="stable")[:4] for k in range(K)])
    np.testing.assert_array_equal(runs["TopImages"].images.numpy(), want)
    fired = {(k, n) for n in range(N) for k in range(K)
             if (reference.upsample(acts[n, k].double().numpy(), H, W) > THRESHOLDS[k]).any()}
    s = runs["UnitMasks"].mask_set(N)
    got = {(k, int(s.images[e])) for k in range(K) for e in range(int(s.offsets[k]), int(s.offsets[k + 1]))}
    assert got == fired


@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_top_images_in_batches_and_shards_equal_a_stable_sort_of_all_images(top_k):
    """Per unit, the top_k images by their map's maximum (ties: the earlier image), their maxima and
    their maps, whether added in uneven batches, merged from shards, or half precision."""
    g = torch.Generator().manual_seed(7)
    acts = torch.randint(0, 4, (23, 5, 3, 2), generator=g).float()  # few values: many ties
    acts[:, 2] = 0.0  # an all-zero unit
    peaks = acts.amax(dim=(2, 3))
    order = torch.stack([torch.sort(peaks[:, k], descending=True, stable=True).indices[:top_k] for k in range(5)])
    one = fd.TopImages(top_k)
    for lo, hi in [(0, 1), (1, 9), (9, 10), (10, 23)]:
        one.add(acts[lo:hi], torch.arange(lo, hi))
    shards = [fd.TopImages(top_k), fd.TopImages(top_k)]
    shards[0].add(acts[:12], torch.arange(12))
    shards[1].add(acts[12:].half(), torch.arange(12, 23))
    merged = shards[0].merge(shards[1])
    for got in (one, merged):
        assert torch.equal(got.images, order)
        assert torch.equal(got.values, peaks.T.double().gather(1, order))
        assert torch.equal(got.maps, torch.stack([acts[order[k], k] for k in range(5)]))


def test_merge_refuses_another_kind(data):
    for name, (make, _) in kinds(data).items():
        with pytest.raises(TypeError, match="merge takes"):
            make().merge(object())
