"""fastdissect: fast, exact Network Dissection.

>>> import torch, fastdissect as fd
>>> acts = torch.rand(4, 8, 7, 7)                               # 4 images, 8 units
>>> masks = torch.rand(4, 5, 28, 28) > 0.7                      # 5 concepts at 28x28
>>> s = fd.score(acts, masks)
>>> s.iou.shape
torch.Size([8, 5])
"""

from . import datasets
from .core.version import __version__
from .files import identity
from .kernels.ext import build_info
from .analyses.ablate import Ablation, ablate, concept_ablation
from .analyses.compare import Comparison, compare
from .analyses.prediction import PredictionExplanation, explain_prediction
from .engine.compositional import Explanations, compositional
from .core.formula import And, Formula, Leaf, Not, Or
from .core.formula_masks import formula_mask
from .pipeline.hooks import token_grid, trace
from .core.masks import ConceptMasks, pack_masks
from .pipeline.dissect import dissect
from .pipeline.sae import train_sae
from .pipeline.images import dissect_images
from .pipeline.clip import ClipDissection, clip_dissect
from .pipeline.image_results import ImageDissection, ImageLayerResult
from .analyses.concept_vectors import ConceptVectors, concept_vectors
from .analyses.bases import BasisComparison, compare_bases
from .analyses.sanity import SanityCheck, sanity_check
from .analyses.synthetic import synthetic_units
from .engine.auroc import auroc, mann_whitney_p
from .engine.wpmi import cos_cubed, soft_wpmi, wpmi
from .bases.sae import SparseAutoencoder
from .core.quantile import NETDISSECT_QUANTILE
from .pipeline.results import Dissection, LayerResult, load
from .report.pages import write_report
from .analyses.rotation import random_rotation, rotation_experiment
from .engine.scoring import Scores, Tally, score
from .analyses.segment import Segmentation, segment
from .engine.top_images import TopImages
from .engine.top_quantile import TopQuantile, thresholds
from .compat import deprecated as _deprecated  # noqa: F401  (old names, for one release)


__all__ = ["Ablation", "PredictionExplanation", "Segmentation", "ablate", "concept_ablation", "explain_prediction", "segment", "And", "ConceptMasks", "Dissection", "Explanations", "Formula", "formula_mask", "Leaf", "Not", "Or", "compositional", "LayerResult", "NETDISSECT_QUANTILE", "Scores", "Tally", "TopImages", "TopQuantile",
           "build_info", "Comparison", "compare", "datasets", "dissect", "identity", "load", "pack_masks", "random_rotation", "rotation_experiment", "score", "thresholds", "token_grid", "trace", "write_report", "SparseAutoencoder", "train_sae"]
