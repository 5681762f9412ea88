"""fd.dissect on 2 and 3 CPU ranks (gloo, loopback) equals one process bit for bit, controls included;
a failing rank stops every rank with its error."""

import time

import pytest
import torch
import torch.multiprocessing as mp

import dist_worker
import fastdissect as fd
from test_pipeline import PLAIN, ColorDetectors


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "concepts"
    fd.datasets.builtin(root, n_images=41, seed=5)  # 41: shards of unequal size
    return root


def launch(world, tmp_path, root, bad_index=None):
    out = tmp_path / f"world{world}"
    out.mkdir()
    start = time.perf_counter()
    mp.spawn(dist_worker.run, args=(world, str(tmp_path / f"init{world}"), str(out), str(root), bad_index),
             nprocs=world, join=True)
    return out, time.perf_counter() - start


@pytest.mark.filterwarnings("ignore:.*with random weights")
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_single_process_result(concepts, tmp_path, world):
    single = fd.dissect(ColorDetectors(), ["conv", "pool"], fd.datasets.Broden(concepts), quantile=0.02,
                        batch_size=6, verbose=False, controls=dist_worker.CONTROLS, **PLAIN)
    out, seconds = launch(world, tmp_path, concepts)
    assert seconds < 60
    for rank in range(world):
        assert not (out / f"rank{rank}.err").exists(), (out / f"rank{rank}.err").read_text()
        got = torch.load(out / f"rank{rank}.pt", weights_only=False)
        for name, layer in single.items():
            for key in ("intersection", "union", "iou", "unit_area", "concept_area", "thresholds"):
                assert torch.equal(got[name]["scores"][key], getattr(layer.scores, key)), (rank, name, key)
            assert got[name]["scores"]["num_images"] == 41
            # the controls too: the permuted one pairs a rank's images with masks from every shard
            for key in ("intersection", "union", "iou"):
                assert torch.equal(got[name]["control"][key], getattr(layer.control, key)), (rank, name, key)
                assert torch.equal(got[name]["random_init"][key], getattr(single.random_init[name].scores, key))
            assert torch.equal(got[name]["top_images"], layer.top_images)
            assert torch.equal(got[name]["top_maps"], layer.top_maps)


def test_a_failing_rank_stops_every_rank_with_its_error(concepts, tmp_path):
    out, seconds = launch(2, tmp_path, concepts, bad_index=30)  # image 30 is in rank 1's shard
    assert seconds < 60
    assert "image 30 is unreadable" in (out / "rank1.err").read_text()
    assert "rank 1 failed: OSError: image 30 is unreadable" in (out / "rank0.err").read_text()
