"""Checkpoints: a rank's accumulators after every `checkpoint_every` batches and after each pass, in
one safetensors file (`checkpoint.safetensors`, or `checkpoint-rankR.safetensors` under
torch.distributed), read back only by a run of the same identity."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic, tensorfile
from ..files.identity import differences

CHECKPOINT_VERSION = 3  # 3: tallies count images (coverage)
CHECKPOINT_KIND = "checkpoint"
CHECKPOINT_FIELDS = ("identity", "stage", "images_done", "quantiles", "tallies", "top", "unit_masks",
                     "control_tallies", "mask_log", "kept")
_RESTART = "remove it, or pass restart=True (--restart) to start afresh"


class CheckpointMismatch(ValueError):
    """A checkpoint written by a dissection of another identity (the message lists what differs)."""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state after its checksum is verified; nothing in it can run code when read
    (CheckpointMismatch names the path if it is not a checkpoint this version wrote)."""
    try:
        state = tensorfile.read(path, kind=CHECKPOINT_KIND)
        return tensorfile.check_fields(state, path, required=CHECKPOINT_FIELDS)
    except tensorfile.UnsafeFileError as exc:
        raise CheckpointMismatch(f"{exc}; {_RESTART}") from None


def legacy_checkpoint(directory: Path) -> Path | None:
    """A checkpoint of fastdissect before checkpoints were safetensors files: a pickle, never read."""
    old = [p for p in Path(directory).glob("checkpoint*.pt") if p.is_file()]
    return old[0] if old else None


class Checkpoint:
    """The checkpoint file of this rank (none without a checkpoint directory) and what it must match."""

    def __init__(self, directory, identity: dict, *, rank: int, world: int, restart: bool, log):
        name = "checkpoint" if world == 1 else f"checkpoint-rank{rank}"
        self.path = Path(directory) / f"{name}{tensorfile.SUFFIX}" if directory else None
        self.identity, self.restart, self.log = identity, restart, log
        self.saved: tuple[int, int] | None = None  # (stage, images done) of the last checkpoint written

    def save(self, stage: int, images_done: int, fields: dict) -> None:
        """Writes `fields` (the accumulators' states, by checkpoint field) with the identity and progress."""
        if self.path is None:
            return
        atomic.make_dirs(self.path.parent)
        state = {"identity": self.identity, "stage": stage, "images_done": images_done, **fields}
        # The file's checksum: a flipped bit in a counter must not resume as a wrong count.
        atomic.write_bytes(self.path, tensorfile.dumps(state, kind=CHECKPOINT_KIND))
        self.saved = (stage, images_done)

    def load(self) -> dict | None:
        """The checkpoint's state, or None to start afresh (no checkpoint, or restart=True and one that
        cannot resume); CheckpointMismatch for one that cannot resume, naming why."""
        path = self.path
        old = legacy_checkpoint(path.parent) if path is not None and not path.is_file() else None
        if old is not None:
            if not self.restart:
                raise CheckpointMismatch(f"{old}: a checkpoint of an older fastdissect, a pickle (reading one can "
                                         f"run code), which this version never reads; {_RESTART}")
            self.log(f"{old} is a checkpoint of an older fastdissect, never read: starting afresh")
        if path is None or not path.is_file():
            return None
        try:
            state = read_checkpoint(path)
        except CheckpointMismatch as exc:
            if not self.restart:
                raise
            self.log(f"{exc.args[0].split(':')[0]} is unreadable: starting afresh")
            return None
        recorded = state["identity"] if isinstance(state["identity"], dict) else {}
        diff = differences(recorded, tensorfile.as_stored(self.identity))
        if diff:
            if self.restart:
                self.log(f"{path} belongs to another dissection ({diff[0]}): starting afresh")
                return None
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise CheckpointMismatch(f"{path} belongs to another dissection: {shown}. Use another checkpoint "
                                     "directory, or restart=True (CLI --restart) to discard it and start afresh")
        self.saved = (state["stage"], state["images_done"])
        return state


def checkpoint_identity(run_identity: dict, shard: tuple[int, int], world: int, resume_identity: dict) -> dict:
    """What a checkpoint must match to resume: the dissection's identity, this rank's shard, the
    number of ranks, the checkpoint format and the options in `resume_identity` (passes)."""
    return {**run_identity, "shard": list(shard), "world": world, "checkpoint_version": CHECKPOINT_VERSION,
            **resume_identity}


def describe_progress(stage: int, images_done: int, lo: int, hi: int) -> str:
    if stage >= 3:
        return "complete"
    return f"pass {stage}, {images_done - lo}/{hi - lo} images"
