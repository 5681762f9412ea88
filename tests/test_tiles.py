"""The report's tile drawing (csrc/common/tiles.h, _dispatch.draw_tiles) against a per-pixel reference
written from its definition: bright inside the mask, dim outside, the second mask's outline, then the
mask's outline on top; an outline pixel is a mask pixel with a 4-neighbour outside the mask or the frame."""

import numpy as np
import pytest
import torch

from fastdissect.kernels import dispatch
from fastdissect.kernels.torch_backend import pack_bits

YELLOW, CYAN = (255, 212, 59), (0, 220, 255)
BACKENDS = ["cpu", "torch"]


def outlined(mask: np.ndarray, y: int, x: int) -> bool:
    h, w = mask.shape
    if not mask[y, x]:
        return False
    if y in (0, h - 1) or x in (0, w - 1):
        return True
    return not (mask[y - 1, x] and mask[y + 1, x] and mask[y, x - 1] and mask[y, x + 1])


def reference(masks, second, bright, dim, thumbnail, out, corner):
    out = out.copy()
    color = {c: np.array(c + (255,), dtype=np.uint8).view(np.int32)[0] for c in (YELLOW, CYAN)}
    for m, (s, y0, x0) in enumerate(corner):
        t = thumbnail[m]
        for y in range(masks.shape[1]):
            for x in range(masks.shape[2]):
                v = bright[t, y, x] if masks[m, y, x] else dim[t, y, x]
                if second is not None and outlined(second[m], y, x):
                    v = color[CYAN]
                if outlined(masks[m], y, x):
                    v = color[YELLOW]
                out[s, y0 + y, x0 + x] = v
    return out


def pattern(kind: str, rng, m: int, h: int, w: int) -> np.ndarray:
    if kind == "random":
        return rng.random((m, h, w)) < 0.5
    if kind == "sparse":
        return rng.random((m, h, w)) < 0.03
    if kind == "empty":
        return np.zeros((m, h, w), dtype=bool)
    if kind == "full":
        return np.ones((m, h, w), dtype=bool)
    if kind == "checker":
        return np.broadcast_to((np.arange(h)[:, None] + np.arange(w)) % 2 == 0, (m, h, w)).copy()
    one = np.zeros((m, h, w), dtype=bool)
    one[:, h // 2, w // 2] = True  # a single pixel: all outline
    return one


def run(backend, masks, second, bright, dim, thumbnail, out, corner):
    packed = lambda b: pack_bits(torch.from_numpy(b.reshape(len(b), -1)))  # noqa: E731
    got = torch.from_numpy(out.copy())
    dispatch.draw_tiles(backend, packed(masks), packed(second) if second is not None else None,
                         torch.from_numpy(bright), torch.from_numpy(dim), torch.from_numpy(thumbnail), got,
                         torch.from_numpy(corner), YELLOW, CYAN)
    return got.numpy()


def case(rng, h, w, kind, m=5, images=3):
    masks = pattern(kind, rng, m, h, w)
    second = pattern("random", rng, m, h, w)
    pixels = lambda: rng.integers(-2**31, 2**31, (images, h, w), dtype=np.int64).astype(np.int32)  # noqa: E731
    thumbnail = rng.integers(0, images, m)
    # tiles in two strips, 2 px apart, inside a larger canvas whose other pixels must stay as they were
    corner = np.array([[i % 2, 1, 3 + (i // 2) * (w + 2)] for i in range(m)], dtype=np.int64)
    out = np.full((2, h + 3, 3 + ((m + 1) // 2) * (w + 2)), -7, dtype=np.int32)
    return masks, second, pixels(), pixels(), thumbnail, out, corner


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (5, 1), (2, 2), (3, 64), (7, 65), (4, 128), (9, 130), (16, 63)])
@pytest.mark.parametrize("kind", ["random", "sparse", "empty", "full", "checker", "one"])
def test_tiles_equal_the_per_pixel_reference(backend, h, w, kind):
    rng = np.random.default_rng(h * 1000 + w)
    masks, second, bright, dim, thumbnail, out, corner = case(rng, h, w, kind)
    for sec in (None, second):
        expected = reference(masks, sec, bright, dim, thumbnail, out, corner)
        assert np.array_equal(run(backend, masks, sec, bright, dim, thumbnail, out, corner), expected)


def test_a_full_mask_is_outlined_along_the_frame_only():
    rng = np.random.default_rng(0)
    masks, _, bright, dim, thumbnail, out, corner = case(rng, 6, 9, "full", m=1)
    got = run("cpu", masks, None, bright, dim, thumbnail, out, corner)[0, 1:7, 3:12]
    yellow = np.array(YELLOW + (255,), dtype=np.uint8).view(np.int32)[0]
    assert (got[[0, -1]] == yellow).all() and (got[:, [0, -1]] == yellow).all()
    assert np.array_equal(got[1:-1, 1:-1], bright[thumbnail[0], 1:-1, 1:-1])


def test_a_112_px_tile_strip_matches_the_torch_backend():
    rng = np.random.default_rng(1)
    args = case(rng, 112, 112, "sparse", m=16, images=4)
    assert np.array_equal(run("cpu", *args[:1], args[1], *args[2:]), run("torch", *args[:1], args[1], *args[2:]))


def test_rgbx_is_pillows_byte_order():
    value = dispatch.rgbx((255, 212, 59))
    assert np.array([value], dtype=np.int32).view(np.uint8).tolist() == [255, 212, 59, 255]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_tile_inputs_are_refused_by_name(backend):
    rng = np.random.default_rng(2)
    masks, _, bright, dim, thumbnail, out, corner = case(rng, 4, 5, "random")
    good = dict(masks=masks, second=None, bright=bright, dim=dim, thumbnail=thumbnail, out=out, corner=corner)

    def call(**change):
        a = dict(good, **change)
        run(backend, a["masks"], a["second"], a["bright"], a["dim"], a["thumbnail"], a["out"], a["corner"])

    with pytest.raises(ValueError, match="thumbnail must be"):
        call(thumbnail=np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="leaves out"):
        call(corner=corner + np.array([0, 0, out.shape[2]]))
    with pytest.raises(ValueError, match="leaves out"):
        call(corner=corner - np.array([0, 2, 0]))
    with pytest.raises(ValueError, match="bright and dim must be"):
        call(dim=dim[:, :, :4].copy())
    with pytest.raises(ValueError, match="masks must be"):
        call(masks=np.zeros((5, 15, 5), dtype=bool))  # 2 words a mask, 4x5 tiles need 1
    with pytest.raises(ValueError, match="bright must be a contiguous CPU torch.int32"):
        call(bright=bright.astype(np.int64))
    strided = torch.from_numpy(np.concatenate([out, out], axis=2))[:, :, ::2]
    with pytest.raises(ValueError, match="out must be a contiguous CPU torch.int32 tensor, got torch.int32 on cpu, n"):
        dispatch.draw_tiles(backend, pack_bits(torch.from_numpy(masks.reshape(5, -1))), None, torch.from_numpy(bright),
                             torch.from_numpy(dim), torch.from_numpy(thumbnail), strided, torch.from_numpy(corner),
                             YELLOW, CYAN)
