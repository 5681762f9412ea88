"""What is asked of a dissection: explanations, segmentation, ablation, rotation, comparisons."""
