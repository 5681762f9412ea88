"""fd.dissect: a model, its layers and a data set in, labeled units out; results, checkpoints."""
