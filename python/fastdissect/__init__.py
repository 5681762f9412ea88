"""fastdissect: fast, exact Network Dissection.

>>> import torch, fastdissect as fd
>>> acts = torch.rand(4, 8, 7, 7)                               # 4 images, 8 units
>>> masks = torch.rand(4, 5, 28, 28) > 0.7                      # 5 concepts at 28x28
>>> s = fd.score(acts, masks)
>>> s.iou.shape
torch.Size([8, 5])
"""

from . import datasets, identity
from ._ext import build_info
from .ablate import Ablation, ablate, concept_ablation
from .compare import Comparison, compare
from .explain import PredictionExplanation, explain_prediction
from .explanations import Explanations, compositional
from .formula import And, Formula, Leaf, Not, Or
from .hooks import token_grid, trace
from .masks import ConceptMasks, pack_masks
from .pipeline import dissect
from .quantile import NETDISSECT_QUANTILE
from .results import Dissection, LayerResult, load
from .rotation import random_rotation, rotation_experiment
from .scoring import Scores, Tally, score
from .segment import Segmentation, segment
from .top_images import TopImages
from .top_quantile import TopQuantile, thresholds

__version__ = "0.1.0"

__all__ = ["Ablation", "PredictionExplanation", "Segmentation", "ablate", "concept_ablation", "explain_prediction", "segment", "And", "ConceptMasks", "Dissection", "Explanations", "Formula", "Leaf", "Not", "Or", "compositional", "LayerResult", "NETDISSECT_QUANTILE", "Scores", "Tally", "TopImages", "TopQuantile",
           "build_info", "Comparison", "compare", "datasets", "dissect", "identity", "load", "pack_masks", "random_rotation", "rotation_experiment", "score", "thresholds", "token_grid", "trace"]
