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
from .engine.auroc import auroc, mann_whitney_p
from .engine.compositional import Formulas, compositional
from .engine.pixel_correlation import pixel_correlation
from .engine.scoring import Scores, Tally, score
from .engine.top_images import TopImages
from .engine.top_quantile import TopQuantile, thresholds
from .engine.wpmi import cos_cubed, soft_wpmi, wpmi
# files
from .files import identity
# datasets (fd.datasets.<name>)
from . import datasets
# bases: a layer read in directions or dictionary features
from .bases.rotation import RandomRotation, random_rotation
from .bases.sae import SparseAutoencoder
# pipeline: fd.dissect, its hooks and its results
from .pipeline.dissect import dissect
from .pipeline.hooks import token_grid, trace
from .pipeline.clip import ClipDissection, clip_dissect
from .pipeline.image_results import ImageDissection, ImageLayerResult
from .pipeline.images import dissect_images
from .pipeline.results import Dissection, LayerResult, load
from .pipeline.sae import train_sae
# report
from .report.labels import write_label_report
from .report.pages import write_report
# analyses: what is asked of a dissection
from .analyses.ablate import Ablation, ablate, concept_ablation
from .analyses.attribution import attribute
from .analyses.bases import BasisComparison, compare_bases
from .analyses.compare import Comparison, compare
from .analyses.concept_vectors import ConceptVectors, concept_vectors
from .analyses.prediction import PredictionExplanation, PredictionExplanations, explain_prediction
from .analyses.rotation import RotationExperiment, rotation_experiment
from .analyses.sanity import SanityCheck, sanity_check
from .analyses.segment import Segmentation, segment
from .analyses.synthetic import synthetic_units
from .analyses.visualization.api import visualize
from .analyses.visualization.result import Visualization
# compat: the old names, for one release
from .compat import deprecated as _deprecated  # noqa: F401


__all__ = [
    # core
    "And", "ConceptMasks", "Formula", "Leaf", "NETDISSECT_QUANTILE", "Not", "Or", "formula_mask",
    "pack_masks",
    # kernels
    "build_info",
    # engine
    "Formulas", "Scores", "Tally", "TopImages", "TopQuantile", "auroc", "compositional",
    "cos_cubed", "mann_whitney_p", "pixel_correlation", "score", "soft_wpmi", "thresholds", "wpmi",
    # files
    "identity",
    # datasets
    "datasets",
    # bases
    "RandomRotation", "SparseAutoencoder", "random_rotation",
    # pipeline
    "ClipDissection", "Dissection", "ImageDissection", "ImageLayerResult", "LayerResult", "clip_dissect",
    "dissect", "dissect_images", "load", "token_grid", "trace", "train_sae",
    # report
    "write_report", "write_label_report",
    # analyses
    "Ablation", "BasisComparison", "Comparison", "ConceptVectors", "PredictionExplanation", "PredictionExplanations",
    "RotationExperiment", "Segmentation", "ablate", "attribute", "compare", "concept_ablation", "explain_prediction",
    "rotation_experiment", "SanityCheck", "sanity_check", "segment", "compare_bases",
    "concept_vectors", "synthetic_units", "Visualization", "visualize",
]


def __getattr__(name: str):
    # fd.Explanations, the formula search's result under its earlier name, for one release (docs/api.md)
    if name == "Explanations":
        from .core.deprecation import warn

        warn("fd.Explanations", "fd.Formulas")
        return Formulas
    raise AttributeError(f"module 'fastdissect' has no attribute {name!r}")
