"""fastdissect: fast, exact Network Dissection.

>>> import torch, fastdissect as fd
>>> acts = torch.rand(4, 8, 7, 7)                               # 4 images, 8 units
>>> masks = torch.rand(4, 5, 28, 28) > 0.7                      # 5 concepts at 28x28
>>> s = fd.score(acts, masks)
>>> s.iou.shape
torch.Size([8, 5])
"""

# Imports and __all__ run by layer, lowest first (docs/development.md); within a layer by module.
# core: the data types and their checks
from .core.version import __version__
from .core.formula import And, Formula, Leaf, Not, Or
from .core.formula_masks import formula_mask
from .core.masks import ConceptMasks, pack_masks
from .core.quantile import NETDISSECT_QUANTILE
# kernels: what the extension was built with
from .kernels.ext import build_info
# engine: the streaming statistics and the formula search
from .engine.compositional import Explanations, compositional
from .engine.scoring import Scores, Tally, score
from .engine.top_images import TopImages
from .engine.top_quantile import TopQuantile, thresholds
# files
from .files import identity
# datasets (fd.datasets.<name>)
from . import datasets
# pipeline: fd.dissect, its hooks and its results
from .pipeline.dissect import dissect
from .pipeline.hooks import token_grid, trace
from .pipeline.results import Dissection, LayerResult, load
# report
from .report.pages import write_report
# analyses: what is asked of a dissection
from .analyses.ablate import Ablation, ablate, concept_ablation
from .analyses.compare import Comparison, compare
from .analyses.prediction import PredictionExplanation, PredictionExplanations, explain_prediction
from .analyses.rotation import RandomRotation, RotationExperiment, random_rotation, rotation_experiment
from .analyses.segment import Segmentation, segment
# compat: the old names, for one release
from .compat import deprecated as _deprecated  # noqa: F401


__all__ = [
    # core
    "And", "ConceptMasks", "Formula", "Leaf", "NETDISSECT_QUANTILE", "Not", "Or", "formula_mask",
    "pack_masks",
    # kernels
    "build_info",
    # engine
    "Explanations", "Scores", "Tally", "TopImages", "TopQuantile", "compositional", "score", "thresholds",
    # files
    "identity",
    # datasets
    "datasets",
    # pipeline
    "Dissection", "LayerResult", "dissect", "load", "token_grid", "trace",
    # report
    "write_report",
    # analyses
    "Ablation", "Comparison", "PredictionExplanation", "PredictionExplanations", "RandomRotation",
    "RotationExperiment", "Segmentation", "ablate", "compare", "concept_ablation", "explain_prediction",
    "random_rotation", "rotation_experiment", "segment",
]
