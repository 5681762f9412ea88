"""The host emulation of the CUDA built-ins (csrc/emu/cuda_emu.h), tested on its own.

The kernels themselves run under it in every test parametrized by the `backend` fixture
("cuda_emu") and must match the cpu backend and the reference exactly.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.core.formula_masks import concept_set
from fastdissect.kernels import dispatch


@pytest.mark.parametrize("items, blocks, threads, n_threads", [
    (1, 1, 1, 1), (1000, 3, 64, 2), (4097, 16, 256, 2), (300, 65, 7, 3), (50, 8, 32, 1)])
def test_shims_grid_stride_and_atomics(items, blocks, threads, n_threads):
    visits = torch.zeros(items, dtype=torch.int64)
    total = torch.zeros(1, dtype=torch.int64)
    bits = torch.zeros(items // 32 + 1, dtype=torch.int32)
    lo_hi = torch.tensor([2 ** 62, -2 ** 62], dtype=torch.int64)
    last = torch.full((items,), -1, dtype=torch.int64)
    dispatch.emu_shim_selftest(items, blocks, threads, n_threads, visits, total, bits, lo_hi, last)
    assert bool((visits == 1).all()), "every grid-stride item is visited exactly once"
    assert int(total) == items * (items - 1) // 2
    want_bits = np.zeros(items // 32 + 1, dtype=np.int64)
    for i in range(items):
        want_bits[i // 32] |= 1 << (i % 32)
    assert np.array_equal(bits.numpy().view(np.uint32), want_bits.astype(np.uint32))
    v = (np.arange(items) * 7919) % 1000 - 500
    assert lo_hi.tolist() == [int(v.min()), int(v.max())]
    # item i is visited by global thread i % (blocks * threads): the grid-stride contract
    assert torch.equal(last, torch.arange(items) % (blocks * threads))


@pytest.mark.parametrize("blocks, threads, n_threads", [(1, 1, 1), (3, 64, 2), (5, 37, 2), (2, 256, 1)])
def test_emulated_barriers_hold_every_thread_of_a_block(blocks, threads, n_threads):
    """launch_blocks runs a block's threads as fibers: none passes a __syncthreads before all reach
    it (the kernel reads a neighbour's shared slot between barriers); with emu::launch, whose
    threads run one after another, __syncthreads is refused."""
    out = torch.full((blocks * threads,), -1, dtype=torch.int64)
    dispatch.emu_barrier_selftest(blocks, threads, n_threads, out)
    b, t = torch.arange(blocks).repeat_interleave(threads), torch.arange(threads).repeat(blocks)
    assert torch.equal(out, 2 * (1000 * b + t))
    with pytest.raises(RuntimeError, match="__syncthreads in a kernel run by emu::launch"):
        dispatch.emu_barrier_selftest(blocks, threads, n_threads, out, barriers=False)


def test_cuda_backend_without_cuda_tensors_is_a_clear_error():
    with pytest.raises(ValueError, match=r'backend="cuda" needs CUDA tensors, got activations on cpu'):
        fd.score(torch.rand(1, 1, 2, 2), torch.ones(1, 1, 4, 4, dtype=torch.bool), backend="cuda")


def test_overflowing_kept_values_fall_back_to_an_exact_further_pass(rng):
    """A unit whose top bin is crowded overflows the kernel's kept buffer: marked incomplete, then exact."""
    v = rng.standard_normal((20000, 2))
    v[:, 0] = 1.0 + 2.0 ** -20 * rng.integers(0, 4, 20000)   # one bin, heavy ties ...
    v[rng.choice(20000, 200, replace=False), 0] = 5.0 + rng.random(200)  # ... under a 1% top
    q = fd.TopQuantile(2, backend="cuda_emu")
    for b in torch.from_numpy(v).split(5000):
        q.add(b)
    assert bool(q.state_dict()["incomplete"][0]) and q.needs_pass
    q.new_pass()
    q.add(torch.from_numpy(v))
    np.testing.assert_array_equal(q.thresholds().numpy(), np.quantile(v, 0.995, axis=0))


def test_selftest_passes_on_the_emulated_kernels_and_fails_loudly(capsys, monkeypatch):
    from fastdissect.engine import selftest

    assert selftest.main(["--backend", "cuda_emu"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") >= 20 and "FAIL" not in out and "all checks passed" in out
    # a wrong kernel result must be reported, not passed over
    real = selftest.reference_scores
    monkeypatch.setattr(selftest, "reference_scores",
                        lambda *a: (lambda r: (r[0] + 1, r[1], r[2]))(real(*a)))
    assert selftest.main(["--backend", "cuda_emu"]) == 1
    assert "FAIL  score: random 7x7" in capsys.readouterr().out


# ---- launch geometry: the emulator runs every kernel with its plan's grid and block, the GPU's
def _grid_stride(kernel, items):
    """The geometry of a grid-stride kernel over `items` (csrc/cuda/launch.cuh), computed here anew."""
    return {"kernel": kernel, "grid": max(1, min(65535, -(-items // 256))), "block": 256, "shared_bytes": 0}


def _words_block(words_per_mask):
    """Threads of a score words block on a GPU: a pass of 4 words a thread in whole warps, 64 to 256."""
    warps = -(-(-(-words_per_mask // 4)) // 32) * 32
    return min(256, max(64, warps))


def _launches():
    log = dispatch.emu_last_launches()
    assert log["launched"] == log["planned"], "an emulated launcher strays from its op's launch plan"
    return log["launched"]


@pytest.mark.parametrize("n, k, size, union", [(3, 2, 7, "global"), (2, 3, 112, "lite"), (1, 2, 224, "netdissect"),
                                               (2, 1, 300, "global")])
def test_emulated_score_launches_follow_the_gpu_plan(n, k, size, union):
    acts = torch.randn(n, k, 5, 5)
    masks = torch.rand(n, 4, size, size) > 0.5
    cats = None if union == "global" else torch.tensor([0, 1, 1, 0])
    fd.score(acts, masks, union=union, categories=cats, backend="cuda_emu")
    words = -(-size * size // 64)
    want = [_grid_stride("score_taps_kernel", 2 * size), _grid_stride("score_peaks_kernel", n * k),
            {"kernel": "score_words_kernel", "grid": n * k, "block": _words_block(words), "shared_bytes": 0}]
    if union != "global":
        want.append(_grid_stride("score_union_kernel", n * k))
    want.append(_grid_stride("score_image_hits_kernel", k * int(fd.pack_masks(masks).offsets[-1])))
    assert _launches() == want


def test_emulated_launches_of_every_op_follow_their_plans():
    fd.thresholds(torch.randn(70, 3, 4, 4), backend="cuda_emu")
    items = 70 * 3 * 16
    assert _launches() == [_grid_stride("histogram_count_kernel", items), _grid_stride("histogram_floor_kernel", 3),
                           _grid_stride("histogram_keep_kernel", items)]
    m = fd.pack_masks(torch.rand(4, 3, 9, 9) > 0.5)
    inter, area = torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    hits = torch.zeros(2, 3, dtype=torch.int64)
    dispatch.tally_batch("cuda_emu", torch.randn(4, 2, 3, 3), m, torch.zeros(2, dtype=torch.float64), "global",
                         None, 0, inter, area, None, torch.zeros(2, dtype=torch.int64), image_hits=hits)
    assert _launches()[-1] == _grid_stride("score_image_hits_kernel", 2 * int(m.offsets[-1]))
    fd.compositional(torch.randn(4, 2, 3, 3), torch.rand(4, 3, 9, 9) > 0.5, length=2, beam_size=2, backend="cuda_emu")
    (launch,) = _launches()
    assert launch["kernel"] == "formula_counts_kernel" and launch["block"] == 256
    leaves = concept_set(m)
    images = leaves.offsets.diff()
    unit_rows = torch.full((4,), -1, dtype=torch.int64)
    dispatch.pair_counts("cuda_emu", leaves, torch.tensor([0, 2]), torch.tensor([1, 1]), unit_rows,
                         torch.zeros(0, m.words_per_mask, dtype=torch.int64), m)
    # one item per image of each pair's leaf with fewer images
    items = int(torch.minimum(images[[0, 2]], images[[1, 1]]).sum())
    assert _launches() == [_grid_stride("pair_counts_kernel", items)]


def test_cuda_launchers_take_their_geometry_from_the_plans():
    """The GPU cannot run here, so its launchers are held to the plans in their source: the one
    `<<<...>>>` of the CUDA build is CudaLauncher's, with a plan's geometry, and every .cu and
    emulated op runs its op's one launch sequence (launch_<op>)."""
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    launches = {p.name: re.findall(r"<<<([^>]*)>>>", p.read_text()) for p in (csrc / "cuda").glob("*.cu*")}
    assert {name: found for name, found in launches.items() if found} == {
        "launch.cuh": ["l.grid, l.block, l.shared_bytes, stream"]}
    for op in ("score", "histogram", "formula_counts", "pair_counts"):
        cu = (csrc / "cuda" / f"{op}_cuda.cu").read_text()
        emu = (csrc / "emu" / f"{op}_emu.cpp").read_text()
        assert f"launch_{op}(" in cu and "CudaLauncher{" in cu
        assert f"launch_{op}(" in emu and "emu::Launcher{" in emu and f"{op}_plan(" in emu
        assert not re.search(r"emu::launch(_blocks)?\(", emu), f"{op}_emu.cpp launches outside its plan"
