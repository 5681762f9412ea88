"""The distributed merge: every rank ends with the accumulators of one process that saw all ranks'
images in rank order (distributed.py says what crosses the network). With one process, nothing."""

from __future__ import annotations

from .bundle import LayerBundle


def merge_quantiles(bundles: dict[str, LayerBundle], comm) -> None:
    """Every rank ends with the same TopQuantile per layer: all shards merged in rank order."""
    if comm.world == 1:
        return
    # A rank without images has seen no layer: it learns the layers' widths from the others.
    widths = {}
    for shard in comm.gather({name: b.quantile().num_units for name, b in bundles.items()
                              if b.get("quantile") is not None}):
        widths.update(shard)
    for name, bundle in bundles.items():
        bundle.quantile(widths[name]).all_reduce(comm)


def combine(bundles: dict[str, LayerBundle], mask_log, comm) -> None:
    """Sums every rank's tallies (int64 all-reduce), merges the top-k lists in rank order and gathers
    the masks the formula search reads."""
    for bundle in bundles.values():
        bundle.all_reduce(comm)
    if mask_log is not None:
        mask_log.all_reduce(comm)
