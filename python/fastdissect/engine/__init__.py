"""Streaming accumulators (tallies, thresholds, top images, unit masks), controls, formula search."""
