"""The host emulation of the CUDA built-ins (csrc/emu/cuda_emu.h), tested on its own.

The kernels themselves run under it in every test parametrized by the `backend` fixture
("cuda_emu") and must match the cpu backend and the reference exactly.
"""

import numpy as np
import pytest
import torch

import fastdissect as fd
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
    assert bool(q._incomplete[0]) and q.needs_pass
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
