"""Drop-in backends for other dissection tools: `netdissect_lite` (NetDissect-Lite's quantile_threshold
and tally, same numbers and tally.csv) and `dissect` (davidbau/dissect's thresholds on upsampled
activations and its IoU). The original NetDissect's union is `union="netdissect"` of `fd.score` /
`fd.dissect`, whose `<layer>-tally.csv` has the tally.csv layout."""

from . import compexp, dissect, netdissect_lite, pillow

__all__ = ["compexp", "dissect", "netdissect_lite", "pillow"]
