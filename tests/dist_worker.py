"""One rank of the distributed tests (spawned by test_distributed.py): dissects and saves its result."""

import traceback

import torch
import torch.distributed as dist

import fastdissect as fd
from test_pipeline import PLAIN, ColorDetectors


CONTROLS = ("permuted", "random_init")


class FailingImages(fd.datasets.Broden):
    """Raises while loading one image, as a broken data loader would."""

    def __init__(self, root, bad_index):
        super().__init__(root)
        self.bad_index = bad_index

    def image(self, i):
        if i == self.bad_index:
            raise OSError(f"image {i} is unreadable")
        return super().image(i)


def run(rank, world, init_file, out_dir, root, bad_index):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = fd.datasets.Broden(root) if bad_index is None else FailingImages(root, bad_index)
        d = fd.dissect(ColorDetectors(), ["conv", "pool"], ds, quantile=0.02, batch_size=6, verbose=False,
                       controls=CONTROLS, **PLAIN)
        torch.save({name: {"scores": vars(r.scores), "top_images": r.top_images, "top_maps": r.top_maps,
                           "control": vars(r.control), "random_init": vars(d.random_init[name].scores)}
                    for name, r in d.items()}, f"{out_dir}/rank{rank}.pt")
    except Exception:
        with open(f"{out_dir}/rank{rank}.err", "w") as f:
            f.write(traceback.format_exc())
    finally:
        dist.destroy_process_group()
