"""fd.TopQuantile streamed over batches vs numpy.quantile and torch.kthvalue on all data in memory.

Workload: 512 units x 200,704 values per unit (4,096 images of 7x7 ReLU maps, float32, 411 MB), the
top 0.5% threshold. Run: pytest benchmarks/bench_quantile.py  (ratios and state memory are printed).
"""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.core.quantile import interpolate, order_statistics
from workloads import layer_activations

N_IMAGES, UNITS, MAP, BATCH = 4096, 512, 7, 128
GROUP = "thresholds: 512 units x 200K values, q=0.005"


@pytest.fixture(scope="module")
def acts():
    return layer_activations(N_IMAGES, UNITS, MAP, seed=1)


@pytest.fixture(scope="module")
def unit_major(acts):
    """(K, n) float64: numpy.quantile's exact input, prepared outside the timing."""
    return acts.transpose(0, 1).reshape(UNITS, -1).double().numpy().copy()


def streamed(acts):
    q = fd.TopQuantile(UNITS)
    peak = 0
    for batch in acts.split(BATCH):
        q.add(batch)
        peak = max(peak, q.state_bytes())
    return q.finish(lambda: acts.split(BATCH)), peak, q.passes


def test_fastdissect_streaming(benchmark, acts, unit_major, capsys):
    benchmark.group = GROUP
    t, peak, passes = benchmark.pedantic(streamed, args=(acts,), rounds=3, iterations=1)
    np.testing.assert_array_equal(t.numpy(), np.quantile(unit_major, 0.995, axis=1))
    data_bytes = acts.numel() * acts.element_size()
    benchmark.extra_info.update(role="fastdissect", state_peak_bytes=peak, data_bytes=data_bytes, passes=passes)
    with capsys.disabled():
        print(f"\nTopQuantile: {passes} pass(es), peak state {peak / 2**20:.1f} MiB = "
              f"{100 * peak / data_bytes:.2f}% of the {data_bytes / 2**20:.0f} MiB of activations")


def test_numpy_quantile(benchmark, unit_major):
    benchmark.group = GROUP
    benchmark.pedantic(np.quantile, args=(unit_major, 0.995), kwargs={"axis": 1}, rounds=3, iterations=1)


def test_torch_kthvalue(benchmark, acts):
    benchmark.group = GROUP
    values = acts.transpose(0, 1).reshape(UNITS, -1).contiguous()  # float32, kthvalue's best case
    i, j, gamma = order_statistics(values.shape[1], 0.995, "linear")

    def kth():
        lo = torch.kthvalue(values, i + 1, dim=1).values.double()
        hi = torch.kthvalue(values, j + 1, dim=1).values.double()
        return interpolate(lo, hi, gamma)

    benchmark.pedantic(kth, rounds=3, iterations=1)


@pytest.mark.skipif(not torch.cuda.is_available() or not fd.build_info().get("cuda"),
                    reason="needs a CUDA device and a build with FASTDISSECT_CUDA")
@pytest.mark.parametrize("backend", ["cuda", "torch"])
def test_streaming_on_the_gpu(benchmark, acts, backend):
    benchmark.group = "thresholds on the GPU: 512 units x 200K values, q=0.005"
    device_acts = acts.cuda()

    def run():
        q = fd.TopQuantile(UNITS, backend=backend)
        for batch in device_acts.split(BATCH):
            q.add(batch)
        return q.finish(lambda: device_acts.split(BATCH))

    benchmark.extra_info.update(role="fastdissect" if backend == "cuda" else "baseline")
    benchmark.pedantic(run, rounds=3, iterations=1)
