"""The `fastdissect` command."""
