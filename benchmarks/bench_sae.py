"""Sparse-autoencoder training throughput: positions per second of one epoch of fd's TopK trainer
(AuxK on) against the dense autoencoder of the same shape trained by the same Adam steps.

Workload: 2**16 positions of a 256-channel layer, 2,048 features, k = 32, 4,096 positions per step
(a ResNet-50 layer3-sized dictionary at 8x). Memory of training: the chunk (2**16 x 256 float32, 64 MB)
plus the weights and Adam's moments (3 x 2 x 2,048 x 256 float32, 12 MB).
Run: pytest benchmarks/bench_sae.py  (ratios and positions per second are printed).
"""

import pytest
import torch

import fastdissect as fd
from fastdissect.bases.sae_training import SAESettings, SAETrainer

POSITIONS, CHANNELS, FEATURES, K, STEP = 1 << 16, 256, 2048, 32, 4096
GROUP = "sae training: 65,536 positions x 256 channels, 2,048 features, k=32"


@pytest.fixture(scope="module")
def rows():
    g = torch.Generator().manual_seed(0)
    return torch.relu(torch.randn(POSITIONS, CHANNELS, generator=g))


def test_fastdissect_topk_trainer(benchmark, rows, capsys):
    benchmark.group = GROUP

    def epoch():
        trainer = SAETrainer(fd.SparseAutoencoder(CHANNELS, FEATURES, K), SAESettings(batch_size=STEP, dead_after=STEP))
        return trainer.fit_chunk(rows)

    benchmark.pedantic(epoch, rounds=3, iterations=1)
    benchmark.extra_info.update(role="fastdissect")
    if benchmark.stats:  # None under --benchmark-disable, where the one execution is not a measurement
        with capsys.disabled():
            print(f"\nTopK SAE training: {POSITIONS / benchmark.stats.stats.median:,.0f} positions/s")


def test_dense_autoencoder(benchmark, rows):
    benchmark.group = GROUP

    def epoch():
        enc, dec = torch.nn.Linear(CHANNELS, FEATURES), torch.nn.Linear(FEATURES, CHANNELS)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=4e-4)
        for batch in rows.split(STEP):
            loss = (dec(torch.relu(enc(batch))) - batch).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    benchmark.pedantic(epoch, rounds=3, iterations=1)
