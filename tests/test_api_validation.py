"""Every public function checks its arguments at entry: one table row per bad argument.

Each row is (function, arguments overriding a valid call, error type, text the message must hold).
The text names the argument, so a row fails if the call succeeds, raises something else, or raises
from deeper inside (torch, the C++ kernels) with a message that does not say which argument is wrong.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch

import fastdissect as fd

NAN, INF = float("nan"), float("inf")
N, K, C = 3, 4, 5  # images, units, concepts of the direct (tensor) calls


class From:
    """An argument value built from the shared environment (a model, a data set, a dissection)."""

    def __init__(self, build):
        self.build = build


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(3, K, 3, padding=1), relu=torch.nn.ReLU(),
                                           pool=torch.nn.AdaptiveAvgPool2d(1), flat=torch.nn.Flatten(),
                                           fc=torch.nn.Linear(K, 3)))


def tiny_dataset(n=6):
    """Colour squares on grey, labelled at half the image size; every image also carries a scene."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = np.full((16, 16, 3), 128, np.uint8)
        labels = np.zeros((8, 8), np.int64)
        y, x = rng.integers(0, 4, size=2)
        colour = 1 + i % 2
        image[2 * y:2 * y + 8, 2 * x:2 * x + 8] = (230, 20, 20) if colour == 1 else (20, 20, 230)
        labels[y:y + 4, x:x + 4] = colour
        samples.append((image, labels, [3]))
    return fd.datasets.SegmentationDataset(samples, ["-", "red", "blue", "street"], ["", "color", "color", "scene"])


@pytest.fixture(scope="module")
def env():
    model, ds = tiny_model(), tiny_dataset()
    d = fd.dissect(model, ["relu"], ds, quantile=0.05, iou_threshold=0.0, batch_size=4, verbose=False)
    return {"model": model, "dataset": ds, "dissection": d, "image": ds[0].image}


def _trace(**kwargs):
    with fd.trace(**kwargs):
        pass


def acts(n=N, k=K):
    return torch.rand(n, k, 4, 4, generator=torch.Generator().manual_seed(1))


def masks(n=N, c=C):
    return torch.rand(n, c, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5


def labels(n=N):
    return torch.randint(0, C, (n, 1, 8, 8), generator=torch.Generator().manual_seed(3))


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def with_nan(x, where=(1, 2, 0, 0)):
    x = x.clone()
    x[where] = NAN
    return x


# function -> (callable, valid arguments); every row overrides some of them.
CALLS = {
    "score": (fd.score, lambda e: dict(activations=acts(), masks=masks())),
    "thresholds": (fd.thresholds, lambda e: dict(activations=acts())),
    "compositional": (fd.compositional, lambda e: dict(activations=acts(), masks=masks(), formula_length=2)),
    "dissect": (fd.dissect, lambda e: dict(model=e["model"], layers=["relu"], dataset=e["dataset"], verbose=False)),
    "explain_prediction": (fd.explain_prediction, lambda e: dict(model=e["model"], images=e["image"],
                                                                 dissection=e["dissection"], layer="relu")),
    "segment": (fd.segment, lambda e: dict(model=e["model"], images=e["image"], dissection=e["dissection"],
                                           layer="relu", verbose=False)),
    "ablate": (fd.ablate, lambda e: dict(model=e["model"], layer="relu", units=[0], dataset=e["dataset"],
                                         verbose=False)),
    "concept_ablation": (fd.concept_ablation, lambda e: dict(model=e["model"], dissection=e["dissection"],
                                                             layer="relu", dataset=None, concept="red",
                                                             verbose=False)),
    "rotation_experiment": (fd.rotation_experiment, lambda e: dict(model=e["model"], layer="relu",
                                                                   dataset=e["dataset"], powers=[0.0, 1.0],
                                                                   verbose=False)),
    "random_rotation": (fd.random_rotation, lambda e: dict(num_units=K)),
    "compare": (fd.compare, lambda e: dict(dissections={"a": e["dissection"], "b": e["dissection"]})),
    "load": (fd.load, lambda e: dict(directory="missing-results-dir")),
    "pack_masks": (fd.pack_masks, lambda e: dict(masks=masks())),
    "pack_labels": (fd.pack_masks, lambda e: dict(labels=labels(), num_concepts=C)),
    "trace": (_trace, lambda e: dict(model=e["model"], layers=["relu"])),
    "token_grid": (fd.token_grid, lambda e: dict(num_prefix_tokens=1)),
    "TopQuantile": (fd.TopQuantile, lambda e: dict(num_units=K)),
    "TopImages": (fd.TopImages, lambda e: dict(top_k=2)),
    "Tally": (fd.Tally, lambda e: dict(num_units=K, num_concepts=C, thresholds=[0.5] * K)),
}

V, T, L, KE = ValueError, TypeError, LookupError, KeyError


ROWS = [
    # ---- fd.score
    ("score", dict(activations=torch.rand(N, K, 4)), V, "activations must have shape [N, K, h, w]"),
    ("score", dict(activations=torch.zeros(0, K, 4, 4)), V, "activations must be non-empty"),
    ("score", dict(activations=acts().to(torch.complex64)), T, "activations must be float32"),
    ("score", dict(activations=acts().long()), T, "activations must be float32"),
    ("score", dict(activations=meta(N, K, 4, 4)), V, "activations is a meta tensor"),
    ("score", dict(activations=acts().to_sparse()), T, "activations must be a dense tensor"),
    ("score", dict(activations=[[1.0]]), T, "activations must be a torch.Tensor or numpy.ndarray"),
    ("score", dict(activations=np.array([[[["a"]]]], dtype=object)), T, "activations must be a numeric array"),
    ("score", dict(activations=with_nan(acts())), V, "activations contains NaN in unit(s) 2"),
    ("score", dict(masks=meta(N, C, 8, 8, dtype=torch.bool)), V, "masks is a meta tensor"),
    ("score", dict(masks=masks().float()), T, "masks must be bool or uint8"),
    ("score", dict(masks=masks()[:, 0]), V, "masks must have shape [N, C, H, W]"),
    ("score", dict(masks=masks(n=N + 1)), V, "activations have N=3, masks have N=4"),
    ("score", dict(masks=masks().tolist()), T, "masks must be a torch.Tensor or numpy.ndarray"),
    ("score", dict(thresholds=torch.tensor([0.0, NAN, 0.0, 0.0])), V, "thresholds must be finite"),
    ("score", dict(thresholds=torch.zeros(K - 1)), V, "thresholds must have shape (4,)"),
    ("score", dict(thresholds=0.5), T, "thresholds must hold one value per unit"),
    ("score", dict(thresholds=["a"] * K), T, "thresholds must be 4 numbers"),
    ("score", dict(thresholds=torch.zeros(K, dtype=torch.complex64)), T, "thresholds must be a float tensor"),
    ("score", dict(thresholds=meta(K)), V, "thresholds is a meta tensor"),
    ("score", dict(quantile=NAN), V, "quantile must be a float in (0, 1)"),
    ("score", dict(quantile=1.5, thresholds=[0.5] * K), V, "quantile must be a float in (0, 1)"),
    ("score", dict(quantile="0.005"), V, "quantile must be a float in (0, 1)"),
    ("score", dict(union="iou"), V, "union must be one of"),
    ("score", dict(union="lite"), V, 'union="lite" needs categories'),
    ("score", dict(union="netdissect", categories=[0, 1]), V, "categories must have shape (5,)"),
    ("score", dict(union="netdissect", categories=[0.5] * C), T, "categories must be integer"),
    ("score", dict(backend="gpu"), V, "backend must be one of"),
    # ---- fd.thresholds
    ("thresholds", dict(activations=torch.rand(N, K, 4)), V, "activations must have shape [N, K, h, w] or [M, K]"),
    ("thresholds", dict(activations=meta(N, K, 4, 4)), V, "activations is a meta tensor"),
    ("thresholds", dict(activations=acts().long()), T, "activations must be float32"),
    ("thresholds", dict(activations=torch.zeros(0, K)), V, "activations must be non-empty"),
    ("thresholds", dict(activations=with_nan(acts())), V, "NaN in unit(s) 2"),
    ("thresholds", dict(quantile=0.0), V, "quantile must be a float in (0, 1)"),
    ("thresholds", dict(quantile=NAN), V, "quantile must be a float in (0, 1)"),
    ("thresholds", dict(method="median"), V, "method must be one of"),
    ("thresholds", dict(backend="gpu"), V, "backend must be one of"),
    # ---- fd.compositional
    ("compositional", dict(formula_length=0), V, "formula_length must be a positive int"),
    ("compositional", dict(formula_length=2.0), T, "formula_length must be a positive int"),
    ("compositional", dict(beam_size=0), V, "beam_size must be a positive int"),
    ("compositional", dict(search="greedy"), V, "search must be one of"),
    ("compositional", dict(search="optimal", formula_length=4), V, "length <= 3, got formula_length=4"),
    ("compositional", dict(penalty=NAN), V, "penalty must be a number in (0, 1]"),
    ("compositional", dict(penalty=0.0), V, "penalty must be a number in (0, 1]"),
    ("compositional", dict(penalty="1"), T, "penalty must be a number in (0, 1]"),
    ("compositional", dict(quantile=2), V, "quantile must be a float in (0, 1)"),
    ("compositional", dict(units=[1.5]), T, "units[0] must be a non-negative int"),
    ("compositional", dict(units=3), T, "did you mean units=[3]?"),
    ("compositional", dict(units=[9]), V, "units [9] are out of range for 4 units"),
    ("compositional", dict(activations=torch.rand(N, K, 4)), V, "activations must be (N, K, h, w)"),
    ("compositional", dict(activations=meta(N, K, 4, 4)), V, "activations is a meta tensor"),
    ("compositional", dict(activations=with_nan(acts())), V, "activations contains NaN"),
    ("compositional", dict(thresholds=torch.zeros(2)), V, "thresholds must have shape (4,)"),
    ("compositional", dict(backend="gpu"), V, "backend must be one of"),
    ("compositional", dict(verbose="yes"), T, "verbose must be True or False"),
    # ---- fd.dissect
    ("dissect", dict(layers="features"), T, "layers must be a list of layer names, not a str: did you mean "
                                            "layers=['features']?"),
    ("dissect", dict(layers=[0]), T, "layers[0] must be a layer name"),
    ("dissect", dict(layers=["relu", "relu"]), V, "layers names ['relu'] more than once"),
    ("dissect", dict(layers={"relu": 1}), T, "layers must be a list of layer names"),
    ("dissect", dict(layers=["nope"]), L, "no layer 'nope'"),
    ("dissect", dict(model="resnet18"), T, "model must be a torch.nn.Module"),
    ("dissect", dict(dataset=From(lambda e: [e["dataset"][0], e["dataset"][1]])), T,
     "dataset must be a concept data set"),
    ("dissect", dict(dataset=[]), T, "fd.datasets.SegmentationDataset(samples"),
    ("dissect", dict(dataset="broden1_224"), T, "fd.datasets.Broden('broden1_224')"),
    ("dissect", dict(dataset=From(lambda e: fd.datasets.SegmentationDataset([], ["-", "a"], ["", "c"]))), V,
     "dataset is empty"),
    ("dissect", dict(image_size=(0, 8)), V, "image_size[0] (height) must be a positive int"),
    ("dissect", dict(image_size=(8,)), V, "image_size must be (height, width): 2 entries, got 1"),
    ("dissect", dict(image_size="64"), T, "image_size must be (height, width) or one int"),
    ("dissect", dict(image_size=8.5), T, "image_size must be (height, width) or one int"),
    ("dissect", dict(image_size=(8.0, 8)), T, "image_size[0] (height) must be a positive int"),
    ("dissect", dict(image_size=-4), V, "image_size must be a positive int"),
    ("dissect", dict(mean=(0.5, 0.5)), V, "mean must have 3 entries (one per RGB channel of the images), got 2"),
    ("dissect", dict(mean=0.5), T, "did you mean mean=(0.5,) * 3?"),
    ("dissect", dict(mean=(0.5, NAN, 0.5)), V, "mean[1] must be a number"),
    ("dissect", dict(mean="rgb"), T, "mean must be a sequence of 3 numbers"),
    ("dissect", dict(std=(0.0, 1.0, 1.0)), V, "std[0] must be a number > 0"),
    ("dissect", dict(std=(1.0, 1.0, -1.0)), V, "std[2] must be a number > 0"),
    ("dissect", dict(std=(1.0, 1.0, INF)), V, "std[2] must be a number > 0"),
    ("dissect", dict(std=(1.0,) * 4), V, "std must have 3 entries"),
    ("dissect", dict(quantile=0.0), V, "quantile must be a float in (0, 1)"),
    ("dissect", dict(quantile=NAN), V, "quantile must be a float in (0, 1)"),
    ("dissect", dict(method="median"), V, "method must be one of"),
    ("dissect", dict(iou_threshold=NAN), V, "iou_threshold must be a number in [0, 1]"),
    ("dissect", dict(iou_threshold=1.5), V, "iou_threshold must be a number in [0, 1]"),
    ("dissect", dict(iou_threshold="0.04"), T, "iou_threshold must be a number in [0, 1]"),
    ("dissect", dict(union="iou"), V, "union must be one of"),
    ("dissect", dict(batch_size=0), V, "batch_size must be a positive int"),
    ("dissect", dict(batch_size=2.0), T, "batch_size must be a positive int"),
    ("dissect", dict(num_workers=-1), V, "num_workers must be a non-negative int"),
    ("dissect", dict(device="nodevice"), V, "device must be a torch device"),
    ("dissect", dict(device=1.5), T, "device must be a torch device"),
    ("dissect", dict(cache=5), V, 'cache must be None, "memory" or a directory'),
    ("dissect", dict(cache_limit=-1), V, "cache_limit must be a non-negative int"),
    ("dissect", dict(transform=fd.token_grid()), T, "transform must be a dict {layer name: callable}"),
    ("dissect", dict(transform={"relu": 3}), T, "transform['relu'] must be callable"),
    ("dissect", dict(transform={"conv": torch.relu}), L, "transform names layers that are not dissected"),
    ("dissect", dict(views=[("relu", torch.relu)]), T, "views must be a dict"),
    ("dissect", dict(views={"v": ("relu",)}), V, "views must map a name to (layer, callable)"),
    ("dissect", dict(top_k=0), V, "top_k must be a positive int"),
    ("dissect", dict(checkpoint=5), T, "checkpoint must be a directory"),
    ("dissect", dict(checkpoint_every=-1), V, "checkpoint_every must be a non-negative int"),
    ("dissect", dict(restart=1), T, "restart must be True or False"),
    ("dissect", dict(backend="gpu"), V, "backend must be one of"),
    ("dissect", dict(distributed="yes"), T, "distributed must be True or False"),
    ("dissect", dict(formula_length=0), V, "formula_length must be a positive int"),
    ("dissect", dict(formula_length=4, search="optimal"), V, "got formula_length=4"),
    ("dissect", dict(beam_size=0), V, "beam_size must be a positive int"),
    ("dissect", dict(search="greedy"), V, "search must be one of"),
    ("dissect", dict(penalty=NAN), V, "penalty must be a number in (0, 1]"),
    ("dissect", dict(metric="accuracy"), V, "metric must be one of"),
    ("dissect", dict(controls="permuted"), T, "did you mean controls=('permuted',)?"),
    ("dissect", dict(controls=("shuffled",)), V, "controls must be drawn from"),
    ("dissect", dict(control_model="resnet18"), T, "control_model must be a torch.nn.Module"),
    ("dissect", dict(control_seed=1.5), T, "control_seed must be an int"),
    ("dissect", dict(stop_early=None), T, "stop_early must be True or False"),
    ("dissect", dict(passes=3), V, "passes must be 1 or 2"),
    ("dissect", dict(memory_limit=-1), V, "memory_limit must be a non-negative number of bytes"),
    ("dissect", dict(spill_dir=3), T, "spill_dir must be a directory"),
    ("dissect", dict(mask_cache=3), V, "mask_cache must be True, False or a directory"),
    ("dissect", dict(verbose="no"), T, "verbose must be True or False"),
    # ---- fd.explain_prediction
    ("explain_prediction", dict(model="resnet18"), T, "model must be a torch.nn.Module"),
    ("explain_prediction", dict(dissection="out"), T, "dissection must be the Dissection fd.dissect returned"),
    ("explain_prediction", dict(dissection={"relu": None}), T, "dissection must be the Dissection"),
    ("explain_prediction", dict(layer=["relu"]), T, "did you mean layer='relu'?"),
    ("explain_prediction", dict(layer="conv"), KE, "the dissection holds no layer 'conv'"),
    ("explain_prediction", dict(images=From(lambda e: e["image"][:, :, :2])), V,
     "image 0: expected (height, width, 3)"),
    ("explain_prediction", dict(images=From(lambda e: e["image"].astype(np.float32))), V, "image 0: expected uint8"),
    ("explain_prediction", dict(target=1.5), T, "target must be a class id"),
    ("explain_prediction", dict(target=-1), V, "target must be a non-negative int"),
    ("explain_prediction", dict(target=[0, 1.0]), T, "target[1] must be a non-negative int"),
    ("explain_prediction", dict(target=torch.tensor([0.5])), T, "target must hold integer class ids"),
    ("explain_prediction", dict(target=7), V, "target 7 is outside the model's 3 classes"),
    ("explain_prediction", dict(attribution="lime"), V, "attribution must be one of"),
    ("explain_prediction", dict(top_k=0), V, "top_k must be a positive int"),
    ("explain_prediction", dict(units="some"), T, "units must be a list of unit numbers"),
    ("explain_prediction", dict(units=[9]), V, "units [9] are outside layer 'relu'"),
    ("explain_prediction", dict(detectors_only="no"), T, "detectors_only must be True or False"),
    ("explain_prediction", dict(image_size=(0, 16)), V, "image_size[0] (height) must be a positive int"),
    # ---- fd.segment
    ("segment", dict(model=None), T, "model must be a torch.nn.Module"),
    ("segment", dict(dissection="out"), T, "fd.load('out')"),
    ("segment", dict(layer=3), T, "layer must be a layer name"),
    ("segment", dict(top_k=0), V, "top_k must be a positive int"),
    ("segment", dict(batch_size=0), V, "batch_size must be a positive int"),
    ("segment", dict(verbose="no"), T, "verbose must be True or False"),
    ("segment", dict(images=From(lambda e: e["image"][:, :, :1])), V, "image 0: expected (height, width, 3)"),
    # ---- fd.ablate, fd.concept_ablation
    ("ablate", dict(model="resnet18"), T, "model must be a torch.nn.Module"),
    ("ablate", dict(layer=["relu"]), T, "did you mean layer='relu'?"),
    ("ablate", dict(layer="nope"), L, "no layer 'nope'"),
    ("ablate", dict(units=1), T, "did you mean units=[1]?"),
    ("ablate", dict(units=[0.5]), T, "units[0] must be a non-negative int"),
    ("ablate", dict(units=[]), V, "units must hold at least one"),
    ("ablate", dict(units=[-1]), V, "units[0] must be a non-negative int"),
    ("ablate", dict(units="0"), T, "units must be a list of unit numbers"),
    ("ablate", dict(units=[9]), V, "units [9] are outside layer 'relu'"),
    ("ablate", dict(dataset=[1, 2]), T, "dataset must have an image(i) method"),
    ("ablate", dict(dataset=None), T, "dataset must be a data set of images"),
    ("ablate", dict(mode="noise"), V, "mode must be one of ('zero', 'mean')"),
    ("ablate", dict(batch_size=0), V, "batch_size must be a positive int"),
    ("ablate", dict(mean=(0.5, 0.5)), V, "mean must have 3 entries"),
    ("ablate", dict(std=(1.0, 0.0, 1.0)), V, "std[1] must be a number > 0"),
    ("ablate", dict(image_size=(16, 0)), V, "image_size[1] (width) must be a positive int"),
    ("ablate", dict(verbose=None), T, "verbose must be True or False"),
    ("concept_ablation", dict(concept=3), T, "concept must be a concept name"),
    ("concept_ablation", dict(concept="zebra"), V, "no detector of 'zebra'"),
    ("concept_ablation", dict(dissection=None), T, "dissection must be the Dissection"),
    ("concept_ablation", dict(layer=3), T, "layer must be a layer name"),
    ("concept_ablation", dict(batch_size=0), V, "batch_size must be a positive int"),
    # ---- fd.rotation_experiment, fd.random_rotation
    ("rotation_experiment", dict(powers=0.5), T, "did you mean powers=[0.5]?"),
    ("rotation_experiment", dict(powers=[NAN]), V, "powers[0] must be a number in [0, 1]"),
    ("rotation_experiment", dict(powers=[0.5, 1.5]), V, "powers[1] must be a number in [0, 1]"),
    ("rotation_experiment", dict(powers=["a"]), T, "powers[0] must be a number in [0, 1]"),
    ("rotation_experiment", dict(powers=[0.5, 0.5]), V, "powers must be distinct numbers"),
    ("rotation_experiment", dict(powers=[]), V, "powers must be distinct numbers"),
    ("rotation_experiment", dict(seed=1.5), T, "seed must be an int"),
    ("rotation_experiment", dict(model="resnet18"), T, "model must be a torch.nn.Module"),
    ("rotation_experiment", dict(layer=["relu"]), T, "did you mean layer='relu'?"),
    ("rotation_experiment", dict(dataset=[]), T, "dataset must be a concept data set"),
    ("rotation_experiment", dict(mean=(0.5, 0.5)), V, "mean must have 3 entries"),
    ("rotation_experiment", dict(image_size=(8,)), V, "image_size must be (height, width)"),
    ("rotation_experiment", dict(batch_size=0), V, "batch_size must be a positive int"),
    ("random_rotation", dict(num_units=0), V, "num_units must be a positive int"),
    ("random_rotation", dict(num_units=4.0), T, "num_units must be a positive int"),
    ("random_rotation", dict(power=NAN), V, "power must be a number in [0, 1]"),
    ("random_rotation", dict(power=2), V, "power must be a number in [0, 1]"),
    ("random_rotation", dict(seed="a"), T, "seed must be an int"),
    # ---- fd.compare, fd.load
    ("compare", dict(dissections=["a", "b"]), T, "dissections must be a dict"),
    ("compare", dict(dissections={"a": 3, "b": 4}), T, "dissections['a'] must be a Dissection"),
    ("compare", dict(dissections=From(lambda e: {1: e["dissection"], "1": e["dissection"]})), V,
     "the names ['1'] are the same"),
    ("compare", dict(dissections=From(lambda e: {"a": e["dissection"]})), V, "at least two dissections"),
    ("compare", dict(series="yes"), T, "series must be True or False"),
    ("load", dict(directory="missing-results-dir"), FileNotFoundError, "no complete saved dissection here"),
    ("load", dict(directory=None), T, "directory must be"),
    ("pack_labels", dict(image_labels=5), T, "image_labels must be a sequence"),
    ("pack_masks", dict(masks=masks(), num_concepts=2.5), T, "num_concepts must be a positive int"),
    # ---- fd.pack_masks
    ("pack_masks", dict(masks=masks()[:, 0]), V, "masks must have shape [N, C, H, W]"),
    ("pack_masks", dict(masks=masks().float()), T, "masks must be bool or uint8"),
    ("pack_masks", dict(masks=meta(N, C, 8, 8, dtype=torch.bool)), V, "masks is a meta tensor"),
    ("pack_masks", dict(masks=masks(), num_concepts=C + 1), V, "num_concepts=6 does not match"),
    ("pack_masks", dict(labels=labels()), V, "pack_masks takes exactly one of `masks`"),
    ("pack_masks", dict(masks=None), V, "pack_masks takes exactly one of `masks`"),
    ("pack_labels", dict(labels=labels().float()), T, "labels must be integer concept ids"),
    ("pack_labels", dict(labels=labels()[:, 0]), V, "labels must have shape [N, P, H, W]"),
    ("pack_labels", dict(num_concepts=0), V, "num_concepts must be a positive int"),
    ("pack_labels", dict(num_concepts=2.5), T, "num_concepts must be a positive int"),
    ("pack_labels", dict(num_concepts=2), V, "is out of range: ids must be in [0, 2)"),
    ("pack_labels", dict(image_labels=[[1]]), V, "image_labels must have one entry per image (N=3)"),
    # ---- fd.trace, fd.token_grid
    ("trace", dict(layers=["nope"]), L, "no layer 'nope'"),
    ("trace", dict(transform={"conv": torch.relu}), L, "transform names layers that are not traced"),
    ("trace", dict(layers="features"), T, "did you mean layers=['features']?"),
    ("token_grid", dict(num_prefix_tokens=-1), V, "num_prefix_tokens must be"),
    ("token_grid", dict(num_prefix_tokens="1"), T, "num_prefix_tokens must be"),
    # ---- constructors
    ("TopQuantile", dict(num_units=0), V, "num_units must be a positive int"),
    ("TopQuantile", dict(num_units=np.float32(4)), T, "num_units must be a positive int"),
    ("TopQuantile", dict(quantile=NAN), V, "quantile must be a float in (0, 1)"),
    ("TopQuantile", dict(quantile=1.0), V, "quantile must be a float in (0, 1)"),
    ("TopQuantile", dict(method="median"), V, "method must be one of"),
    ("TopQuantile", dict(backend="gpu"), V, "backend must be one of"),
    ("TopQuantile", dict(refine_budget=0), V, "refine_budget must be a positive int"),
    ("TopImages", dict(top_k=0), V, "top_k must be a positive int"),
    ("TopImages", dict(top_k=2.5), T, "top_k must be a positive int"),
    ("Tally", dict(num_units=0), V, "num_units must be a positive int"),
    ("Tally", dict(num_concepts=True), T, "num_concepts must be a positive int"),
    ("Tally", dict(thresholds=[0.5, NAN, 0.5, 0.5]), V, "thresholds must be finite"),
    ("Tally", dict(thresholds=[0.5] * (K + 1)), V, "thresholds must have shape (4,)"),
    ("Tally", dict(thresholds=None), T, "thresholds must be a torch.Tensor or numpy.ndarray"),
    ("Tally", dict(union="iou"), V, "union must be one of"),
    ("Tally", dict(union="netdissect"), V, 'union="netdissect" needs categories'),
    ("Tally", dict(backend="gpu"), V, "backend must be one of"),
    ("Tally", dict(device="nodevice"), V, "device must be a torch device"),
]


def _row_id(row) -> str:
    values = row.values if hasattr(row, "values") else row
    function, overrides = values[0], values[1]
    shown = ",".join(f"{k}={v!r}"[:40] if not isinstance(v, (torch.Tensor, np.ndarray, From)) else
                     f"{k}=<{type(v).__name__}>" for k, v in overrides.items())
    return f"{function}[{shown}]"


def test_every_public_function_has_rows():
    covered = {(r.values if hasattr(r, "values") else r)[0] for r in ROWS}
    assert covered == set(CALLS)
    public = {"score", "dissect", "compositional", "thresholds", "explain_prediction", "segment", "ablate",
              "concept_ablation", "rotation_experiment", "random_rotation", "compare", "load", "pack_masks",
              "trace", "token_grid", "TopQuantile", "TopImages", "Tally"}
    assert public <= covered and all(hasattr(fd, name) for name in public)


@pytest.mark.parametrize("function, overrides, error, needle", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_argument_is_refused_by_name(env, function, overrides, error, needle):
    call, valid = CALLS[function]
    kwargs = {**valid(env), **{k: v.build(env) if isinstance(v, From) else v for k, v in overrides.items()}}
    with pytest.raises(Exception) as info:
        call(**kwargs)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert needle in str(info.value), f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("function", ["score", "thresholds", "compositional", "random_rotation", "pack_masks",
                                      "pack_labels", "trace", "token_grid", "TopQuantile", "TopImages", "Tally",
                                      "compare", "explain_prediction", "segment"])
def test_the_valid_calls_the_rows_start_from_succeed(env, function):
    call, valid = CALLS[function]
    call(**valid(env))


def test_an_int_image_size_is_a_square(env):
    model, ds = env["model"], env["dataset"]
    square = fd.dissect(model, ["relu"], ds, image_size=8, quantile=0.05, verbose=False)
    pair = fd.dissect(model, ["relu"], ds, image_size=(8, 8), quantile=0.05, verbose=False)
    assert square.identity["image_size"] == pair.identity["image_size"] == [8, 8]
    assert square["relu"].top_maps.shape[2:] == (8, 8)
    assert torch.equal(square["relu"].scores.intersection, pair["relu"].scores.intersection)


def test_numpy_scalars_and_tensors_are_accepted_where_python_numbers_are(env):
    a = acts()
    t = fd.thresholds(a, quantile=np.float64(0.05))
    assert fd.score(a, masks(), thresholds=t.numpy(), quantile=np.float32(0.05)).iou.shape == (K, C)
    assert fd.TopImages(np.int64(2)).top_k == 2
    d = fd.dissect(env["model"], ("relu",), env["dataset"], mean=np.zeros(3), std=torch.ones(3),
                   image_size=(np.int64(16), 16), batch_size=np.int32(4), quantile=0.05, verbose=False)
    assert d.identity["mean"] == [0.0, 0.0, 0.0] and d.identity["image_size"] == [16, 16]


def test_bad_type_errors_are_also_value_errors():
    # Callers that caught ValueError for a bad option (as these checks raised before) still do.
    with pytest.raises(ValueError, match="num_units"):
        fd.random_rotation(4.0)
    with pytest.raises(TypeError, match="num_units"):
        fd.random_rotation(4.0)
