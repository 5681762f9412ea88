"""The fast NetDissect-Lite drop-in: the Pillow-mode kernel that evaluates only pixels whose window
holds a hot source, the chunk-vectorised label packer, and the mask cache that packs a directory's
labels once. References: Pillow's own resize (through compat.pillow, tested against Pillow itself),
a per-image MaskBuilder packer, and the tally without a cache."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.kernels import dispatch
from fastdissect.compat import netdissect_lite as lite
from fastdissect.compat import pillow
from fastdissect.compat.pillow import resize_bilinear
from fastdissect.datasets import mask_cache
from fastdissect.core.masks import MaskBuilder
from test_compat import reference_tally
from test_datasets import CATEGORIES, write_fixture


def pillow_masks(act: torch.Tensor, thresholds: torch.Tensor, H: int, W: int, exhaustive: bool) -> torch.Tensor:
    """(N, K, H, W) bool masks of the kernel in Pillow mode (read through mask_out)."""
    N, K, h, w = act.shape
    tables = pillow.kernel_tables(h, w, H, W)
    masks = fd.pack_masks(labels=torch.ones(N, 1, H, W, dtype=torch.int64), num_concepts=2)
    out = torch.zeros(N, K, (H * W + 63) // 64, dtype=torch.int64)
    inter, area = torch.zeros(K, 2, dtype=torch.int64), torch.zeros(K, dtype=torch.int64)
    dispatch.tally_batch("cpu", act, masks, thresholds.double(), "global", None, 0, inter, area, None,
                          pillow=tables, exhaustive=exhaustive, mask_out=out)
    bits = np.unpackbits(out.numpy().view(np.uint8), axis=-1, bitorder="little")[..., :H * W]
    return torch.from_numpy(bits.reshape(N, K, H, W).astype(bool))


def reference_masks(act: torch.Tensor, thresholds: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Lite's rule: a map whose max exceeds T is resized by Pillow (float32) and thresholded."""
    a = act.double().numpy()
    up = resize_bilinear(a.astype(np.float32), H, W).astype(np.float64)
    t = thresholds.double().numpy()[None, :, None, None]
    fires = a.reshape(*a.shape[:2], -1).max(axis=-1)[..., None, None] > t
    return torch.from_numpy((up > t) & fires)


def adversarial_maps(rng, n, k, h, w):
    """ReLU-like maps, with units whose values sit exactly at, one ulp around, or far from T."""
    a = np.maximum(rng.standard_normal((n, k, h, w)), 0)
    a[:, 0] = 0                                     # a dead unit
    a[:, 1] = np.round(a[:, 1] * 2) / 2             # ties: many values equal the threshold
    a[0, 2] = 1.0                                   # one constant map
    a[:, 3] = -np.abs(a[:, 3])                      # negative values and a negative threshold
    t = np.quantile(a.transpose(1, 0, 2, 3).reshape(k, -1), 0.9, axis=1)
    t[1] = 0.5
    t[2] = np.nextafter(1.0, 0)                     # the constant map is one ulp above T
    near = rng.random((n, k, h, w)) < 0.2           # values one float32 ulp either side of T
    a = np.where(near, np.nextafter(t[None, :, None, None].astype(np.float32),
                                    np.where(rng.random((n, k, h, w)) < 0.5, np.inf, -np.inf)), a)
    return torch.from_numpy(a), torch.from_numpy(t)


@pytest.mark.parametrize("h, w, H, W", [(7, 7, 64, 64), (7, 7, 113, 113), (3, 5, 112, 40), (13, 9, 56, 30),
                                        (1, 1, 8, 8), (6, 6, 6, 6), (2, 9, 17, 9)])
def test_pillow_mode_equals_pillow_resize_and_the_exhaustive_evaluation(rng, h, w, H, W):
    act, t = adversarial_maps(rng, 4, 6, h, w)
    want = reference_masks(act, t, H, W)
    fast = pillow_masks(act, t, H, W, exhaustive=False)
    assert torch.equal(fast, want)
    assert torch.equal(pillow_masks(act, t, H, W, exhaustive=True), want)
    assert fast.any() and not fast.all()  # the case is not trivial


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pillow_mode_on_half_single_and_non_contiguous_maps(rng, dtype):
    act, t = adversarial_maps(rng, 3, 5, 7, 7)
    act = act.to(dtype)
    strided = act.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    want = reference_masks(act, t, 50, 50)
    assert torch.equal(pillow_masks(act, t, 50, 50, exhaustive=False), want)
    assert torch.equal(pillow_masks(strided, t, 50, 50, exhaustive=False), want)


def per_image_masks(data, start, stop):
    """The packer's reference: image by image, plane by plane, labels found with np.unique."""
    _, sh, sw, _ = data.rows[start]
    builder = MaskBuilder(data.num_labels, sh, sw)
    for n in range(start, stop):
        planes, scalars, _ = data.labels(n)
        ids, masks, whole = [], [], []
        for plane in planes:
            present = np.unique(plane[plane > 0])
            ids += present.tolist()
            masks += [plane.ravel() == c for c in present]
            whole += [False] * present.size
        ids += scalars
        masks += [np.ones(sh * sw, bool)] * len(scalars)
        whole += [True] * len(scalars)
        builder.add_images(1, np.zeros(len(ids), np.int64), np.asarray(ids, np.int64),
                           np.asarray(masks, bool).reshape(len(ids), sh * sw), np.asarray(whole, bool))
    return builder.build()


@pytest.fixture
def broden(tmp_path, rng):
    root = tmp_path / "broden"
    write_fixture(root, rng)
    return root


def test_chunk_packer_equals_the_per_image_packer(broden):
    data = lite.LiteData(broden)
    for start, stop in [(0, 5), (1, 4), (3, 4)]:
        got, want = lite._lite_masks(data, start, stop), per_image_masks(data, start, stop)
        for field in ("offsets", "concept_ids", "areas"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        assert torch.equal(got.to_dense(), want.to_dense())


def lite_case(rng, broden):
    features = np.maximum(rng.standard_normal((5, 7, 3, 3)), 0)
    return features, lite.quantile_threshold(features, 0.2)


def test_second_call_reads_the_cache_and_decodes_nothing(broden, rng, tmp_path, monkeypatch):
    features, t = lite_case(rng, broden)
    cache = tmp_path / "cache"
    first = lite.tally(features, t, broden, progress=False, mask_cache=cache)
    assert first == reference_tally(features, t, broden, CATEGORIES)
    decoded = []
    real = lite.LiteData.labels
    monkeypatch.setattr(lite.LiteData, "labels", lambda self, n: decoded.append(n) or real(self, n))
    other = np.maximum(rng.standard_normal((5, 4, 3, 3)), 0)  # another layer
    t2 = lite.quantile_threshold(other, 0.2)
    assert lite.tally(other, t2, broden, progress=False, mask_cache=cache) == \
        lite.tally(other, t2, broden, progress=False, mask_cache=False)
    decoded_without_cache = len(decoded)
    decoded.clear()
    lite.tally(other, t2, broden, progress=False, mask_cache=cache)
    assert decoded == [] and decoded_without_cache == 5
    assert len(list((cache / "masks").iterdir())) == 1  # one store, no leftovers


def test_tallies_from_the_store_do_not_depend_on_the_chunk(broden, rng, tmp_path):
    """From the store a chunk holds as many images as fit chunk_bytes; one image a chunk, two, or
    all at once give the same counts."""
    features, t = lite_case(rng, broden)
    data = lite.LiteData(broden, CATEGORIES)
    store = lite.packed_labels(data, lite._lite_masks, "fastdissect.compat.netdissect_lite", tmp_path / "c", False)
    (sh, sw), = {(sh, sw) for _, sh, sw, _ in data.rows}
    image = features[0].nbytes
    runs = [lite._tally_kernel(data, store, features, t, sh, sw, False, chunk_bytes=b) for b in (1, 2 * image, 1 << 30)]
    for counts in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], counts))
    assert runs[0][0].sum() > 0


def test_a_second_call_parses_and_opens_nothing_until_a_file_changes(broden, rng, tmp_path, monkeypatch):
    """Within a process the directory's CSVs are parsed once and its store opened once; a rewritten
    CSV (same bytes, new stamp) is parsed again, a changed one gives its new content's rows."""
    from fastdissect.files import identity
    from fastdissect.datasets import mask_cache as mc

    features, t = lite_case(rng, broden)
    cache = tmp_path / "cache"
    want = lite.tally(features, t, broden, progress=False, mask_cache=cache)
    opened = []
    real_open = mc.open_packed
    monkeypatch.setattr(mc, "open_packed", lambda path: opened.append(path) or real_open(path))
    data = lite.lite_data(broden, None)
    assert lite.tally(features, t, broden, progress=False, mask_cache=cache) == want and opened == []
    assert lite.lite_data(broden, None) is data
    label_csv = broden / "label.csv"
    text = label_csv.read_text()
    try:
        label_csv.write_text(text)
        assert lite.lite_data(broden, None) is not data
        label_csv.write_text(text.replace(",red,", ",rouge,", 1))
        assert "rouge" in lite.lite_data(broden, None).names
        fresh = identity._digest()
        fresh.update(label_csv.read_bytes())
        assert identity.file_hash(label_csv) == fresh.hexdigest()
    finally:
        label_csv.write_text(text)


def test_a_changed_label_file_is_packed_again(broden, rng, tmp_path):
    features, t = lite_case(rng, broden)
    cache = tmp_path / "cache"
    lite.tally(features, t, broden, progress=False, mask_cache=cache)
    label = sorted((broden / "images").glob("im0_object*.png"))[0]
    from PIL import Image

    rgb = np.asarray(Image.open(label).convert("RGB")).copy()
    rgb[..., 0] = np.where(rgb[..., 0] == 2, 0, rgb[..., 0])  # erase one label
    Image.fromarray(rgb).save(label)
    assert lite.tally(features, t, broden, progress=False, mask_cache=cache) == \
        reference_tally(features, t, broden, CATEGORIES)
    assert len(list((cache / "masks").iterdir())) == 1


def test_an_interrupted_or_damaged_store_is_never_read(broden, rng, tmp_path, monkeypatch):
    features, t = lite_case(rng, broden)
    cache = tmp_path / "cache"
    real = lite._lite_masks
    calls = []

    def fail_on_second_chunk(data, start, stop):
        calls.append(start)
        raise KeyboardInterrupt

    monkeypatch.setattr(lite, "_lite_masks", fail_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        lite.tally(features, t, broden, progress=False, mask_cache=cache)
    assert calls and list((cache / "masks").iterdir()) == []  # the temporary directory went too
    monkeypatch.setattr(lite, "_lite_masks", real)
    want = reference_tally(features, t, broden, CATEGORIES)
    assert lite.tally(features, t, broden, progress=False, mask_cache=cache) == want
    store = next((cache / "masks").iterdir())
    words = store / "words.u64"
    data = bytearray(words.read_bytes())
    data[0] ^= 1
    words.write_bytes(bytes(data))  # damaged: its checksum no longer matches, so it is packed again
    assert lite.tally(features, t, broden, progress=False, mask_cache=cache) == want


def test_mask_cache_argument_and_location(broden, rng, tmp_path, monkeypatch):
    features, t = lite_case(rng, broden)
    with pytest.raises(ValueError, match="mask_cache must be True, False or a directory, got 3"):
        lite.tally(features, t, broden, progress=False, mask_cache=3)
    monkeypatch.setenv(mask_cache.ENV, str(tmp_path / "env-cache"))
    assert mask_cache.cache_root() == tmp_path / "env-cache"
    lite.tally(features, t, broden, progress=False)
    assert len(list((tmp_path / "env-cache" / "masks").iterdir())) == 1
    monkeypatch.delenv(mask_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mask_cache.cache_root() == tmp_path / "xdg" / "fastdissect"
    assert mask_cache.cache_root(tmp_path / "mine") == tmp_path / "mine"


def test_compexp_reads_the_same_cache_mechanism(broden, rng, tmp_path, monkeypatch):
    from fastdissect.compat import compexp

    features = np.maximum(rng.standard_normal((5, 4, 3, 3)), 0)
    t = lite.quantile_threshold(features, 0.2)
    kwargs = dict(categories=None, length=2, beam_size=3, progress=False)
    want = compexp.tally(features, t, broden, mask_cache=False, **kwargs)
    assert compexp.tally(features, t, broden, mask_cache=tmp_path / "c", **kwargs) == want
    decoded = []
    real = lite.LiteData.labels
    monkeypatch.setattr(lite.LiteData, "labels", lambda self, n: decoded.append(n) or real(self, n))
    assert compexp.tally(features, t, broden, mask_cache=tmp_path / "c", **kwargs) == want
    assert decoded == []
    lite.tally(features, t, broden, progress=False, mask_cache=tmp_path / "c")  # Lite's planes: its own store
    assert len(list((tmp_path / "c" / "masks").iterdir())) == 2
