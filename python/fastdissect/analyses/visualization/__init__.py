"""Feature visualisation (Olah et al., Distill 2017): the image that maximises a unit, a basis
feature, a layer or a class, found by gradient ascent on a parameterised image."""
