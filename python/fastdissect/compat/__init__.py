"""Drop-in backends for other dissection tools: `netdissect_lite` (NetDissect-Lite's quantile_threshold
and tally, same numbers and tally.csv). The original NetDissect's union is `union="netdissect"` of
`fd.score` / `fd.dissect`, whose `<layer>-tally.csv` has the tally.csv layout."""

from . import netdissect_lite, pillow

__all__ = ["netdissect_lite", "pillow"]
