"""Names of earlier releases that keep working for one release, each with a DeprecationWarning that
names its replacement. They live here, above every layer, because each one ties a lower layer's
type to a higher layer's function (a result to the report, a formula to the mask evaluator): the
layers themselves stay free of those ties, and removing this module removes the old names."""

from __future__ import annotations

import functools

from ..core.deprecation import warn
from ..core.formula import Formula
from ..core.formula_masks import formula_mask
from ..pipeline.results import Dissection
from ..report.pages import write_report


def _deprecated_method(cls, name: str, new: str, call):
    @functools.wraps(call)
    def method(self, *args, **kwargs):
        warn(f"{cls.__name__}.{name}", new)
        return call(self, *args, **kwargs)
    setattr(cls, name, method)


_deprecated_method(Dissection, "report", "fd.write_report(dissection, directory, dataset=None)", write_report)
_deprecated_method(Formula, "mask", "fd.formula_mask(formula, masks)", formula_mask)
