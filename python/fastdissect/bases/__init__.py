"""Bases of a layer beyond its unit axes: sparse autoencoders (and their training)."""
