"""`fastdissect dissect --labels images|clip`: units labelled from image-level tags (fd.dissect_images)
or from a word list and a CLIP model (fd.clip_dissect) instead of masks, from the same command.

Flags of mask labels that mean nothing here (--union, --control, --checkpoint, ...) are refused by
name rather than ignored: a user who asked for a control must not believe one ran. A flag counts as
given when its value differs from the parser's default (which the parser hands over in
`args.label_defaults`, so the defaults are written once, in the parser)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .common import at_least, layer_transform, model_and_data, open_dataset

KINDS = ("masks", "images", "clip")
IMAGE_METRICS = ("auroc", "auprc", "correlation", "f1", "iou")
MASK_METRICS = ("iou", "f1", "precision", "recall", "coverage")
MASK_QUANTILE, IMAGE_QUANTILE = 0.005, 0.05
# the flags each kind of labels leaves unused (dests), and the labels they belong to
MASK_ONLY = ("union", "iou_threshold", "passes", "cache", "spill_dir", "mask_cache", "no_mask_cache", "checkpoint",
             "checkpoint_every", "restart", "control", "control_seed", "workers", "formula_layers", "control_layers")
CLIP_ONLY = ("clip", "concepts", "top_k", "similarity", "clip_cache")
UNUSED = {"masks": ("reduce", "images_dir") + CLIP_ONLY,
          "images": MASK_ONLY + CLIP_ONLY,
          "clip": MASK_ONLY + ("reduce", "formula_length", "beam_size", "search", "metric", "quantile")}
OWNER = {**{dest: "--labels masks" for dest in MASK_ONLY}, **{dest: "--labels clip" for dest in CLIP_ONLY},
         "reduce": "--labels images", "images_dir": "--labels images or clip",
         **{dest: "--labels masks or images" for dest in ("formula_length", "beam_size", "search", "metric",
                                                           "quantile")}}


def add_options(p) -> None:
    """The --labels group of `fastdissect dissect`; call it after the other options (it records their
    defaults, to tell a flag given from one left alone)."""
    g = p.add_argument_group("labels beyond masks", "units labelled from image-level tags or from words and CLIP")
    g.add_argument("--labels", choices=KINDS, default="masks",
                   help="masks: Network Dissection (default); images: image-level tags, INVERT-style "
                        "(fd.dissect_images: --metric, --reduce, --formula-length); clip: words and a CLIP model, "
                        "CLIP-Dissect (fd.clip_dissect: --clip, --concepts)")
    g.add_argument("--images-dir", default=None, metavar="DIR",
                   help="with a tags CSV (header image,tags; tags ;-separated) as --dataset: the folder its image "
                        "paths are relative to. Without it --dataset is a folder per class, or a concept data set")
    g.add_argument("--reduce", choices=("max", "mean"), default=None,
                   help="--labels images: a unit's score on an image, the max (default) or the mean of its map")
    g.add_argument("--clip", default=None, metavar="PATH_OR_NAME",
                   help="--labels clip: a transformers CLIP directory or a name in the local hub cache (never "
                        "downloaded), or open_clip:ARCH:WEIGHTS_FILE")
    g.add_argument("--concepts", default=None, metavar="WORDS_TXT", help="--labels clip: the words, one per line")
    g.add_argument("--top-k", type=at_least(1), default=None, metavar="N",
                   help="--labels clip: the images per unit soft-WPMI weighs (default 100, at most the images)")
    g.add_argument("--similarity", choices=("soft_wpmi", "wpmi", "cos_cubed"), default=None,
                   help="--labels clip: a unit's score for a word (default soft_wpmi, CLIP-Dissect's)")
    g.add_argument("--clip-cache", default=None, metavar="DIR",
                   help="--labels clip: keep the CLIP image embeddings here, per (CLIP weights, data set)")
    p.set_defaults(label_defaults={dest: p.get_default(dest) for dest in OWNER})


def given(args, dest: str) -> bool:
    return getattr(args, dest, None) != args.label_defaults.get(dest)


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check(args) -> None:
    """Refuses, by name, a flag this kind of labels does not use and a --metric it does not know."""
    kind = args.labels
    for dest in UNUSED[kind]:
        if given(args, dest):
            raise ValueError(f"{flag(dest)} does not apply to --labels {kind} (it is an option of {OWNER[dest]})")
    if kind != "masks" and args.weights and any(ch in args.weights for ch in "*?["):
        raise ValueError(f"--weights {args.weights}: a series of checkpoints is dissected with --labels masks only")
    metrics = IMAGE_METRICS if kind == "images" else MASK_METRICS
    if kind != "clip" and args.metric is not None and args.metric not in metrics:
        raise ValueError(f"--metric {args.metric} is not a metric of --labels {kind}: choose from {', '.join(metrics)}")
    if kind == "clip" and (args.clip is None or args.concepts is None):
        missing = "--clip" if args.clip is None else "--concepts"
        raise ValueError(f"--labels clip needs {missing} (--clip PATH_OR_NAME --concepts WORDS_TXT)")


def open_tags(spec: str, images_dir, root: Path):
    """--dataset for image labels: a tags CSV (with --images-dir), a folder per class, or a concept data set."""
    import fastdissect as fd

    path = Path(spec)
    if images_dir is not None:
        if not path.is_file():
            raise FileNotFoundError(f"--dataset {spec}: with --images-dir, expected a tags CSV file "
                                    "(header image,tags)")
        return fd.datasets.from_tags_csv(path, images_dir)
    if path.is_file():
        raise ValueError(f"--dataset {spec} is a file: a tags CSV needs --images-dir, the folder its images are in")
    concept_set = spec == "builtin" or (path / "index.csv").is_file() or (path / "fastdissect-masks.json").is_file()
    return open_dataset(spec, root) if concept_set else fd.datasets.from_image_folder(path)


@contextlib.contextmanager
def _transformers_bars(verbose: bool):
    """--quiet silences transformers' own progress bars (loading the weights) too, for this call only."""
    try:
        from transformers.utils import logging
    except ImportError:
        yield
        return
    was = logging.is_progress_bar_enabled()
    if not verbose:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def load_clip(spec: str):
    """--clip: open_clip:ARCH:WEIGHTS_FILE, else a transformers CLIP directory or hub-cache name."""
    from ..pipeline.clip_models import OpenCLIP, TransformersCLIP

    if not spec.startswith("open_clip:"):
        return TransformersCLIP.load(spec)
    arch, _, weights = spec[len("open_clip:"):].partition(":")
    if not arch or not weights or not Path(weights).is_file():
        raise FileNotFoundError(f"--clip {spec}: expected open_clip:ARCH:WEIGHTS_FILE with a local weights file "
                                "(nothing is downloaded)")
    try:
        import open_clip
    except ImportError:
        raise ImportError(f"--clip {spec} needs the open_clip package (pip install open_clip_torch)") from None
    model = open_clip.create_model(arch, pretrained=None)  # the architecture; its weights are read here, safely
    model.load_state_dict(_weights(weights))
    size = model.visual.image_size
    return OpenCLIP(model, open_clip.get_tokenizer(arch), image_size=size[0] if isinstance(size, tuple) else size)


def _weights(path: str) -> dict:
    """A state dict from safetensors, or from torch's restricted unpickler (tensors only, never code)."""
    import torch

    from ..files.tensorfile import read_tensors

    if Path(path).suffix == ".safetensors":
        return read_tensors(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def run(args, layers) -> None:
    """Dissects `layers` with --labels images or clip (check(args) has passed) and writes OUT."""
    start = time.perf_counter()
    opener = lambda spec, root: open_tags(spec, args.images_dir, root)  # noqa: E731
    model, dataset, size, mean, std = model_and_data(args, opener=opener)
    if args.device is not None:
        model = model.to(args.device)
    common = dict(batch_size=args.batch_size, image_size=size, mean=mean, std=std,
                  transform=layer_transform(args, layers), verbose=not args.quiet)
    result = _images(args, model, layers, dataset, common) if args.labels == "images" else \
        _clip(args, model, layers, dataset, common)
    page = write_results(result, args.labels, Path(args.out), verbose=not args.quiet)
    print(summary_text(result, args.labels))
    print(f"results in {args.out}, report: {page} ({time.perf_counter() - start:.0f} s)")


def _images(args, model, layers, dataset, common):
    import fastdissect as fd

    return fd.dissect_images(model, layers, dataset, reduce=args.reduce or "max", metric=args.metric or "auroc",
                             formula_length=args.formula_length or 1, beam_size=args.beam_size, search=args.search,
                             quantile=args.quantile if args.quantile is not None else IMAGE_QUANTILE, **common)


def _clip(args, model, layers, dataset, common):
    import torch

    import fastdissect as fd

    top_k = args.top_k if args.top_k is not None else min(100, len(dataset))
    if top_k > len(dataset):
        raise ValueError(f"--top-k {top_k} is more than the {len(dataset)} images of --dataset {args.dataset}")
    with _transformers_bars(not args.quiet):
        clip = load_clip(args.clip)
    if args.device is not None:  # the CLIP model runs where the target model does
        clip.model.to(args.device)
        clip.device = torch.device(args.device)
    return fd.clip_dissect(model, layers, dataset, args.concepts, clip=clip, top_k=top_k,
                           similarity=args.similarity or "soft_wpmi", cache=args.clip_cache, **common)


def write_results(result, kind: str, out: Path, *, verbose: bool) -> Path:
    """OUT: one CSV per layer, labels.json (the settings and every unit's row), for image labels the
    whole result (images.safetensors, fastdissect.pipeline.image_results.ImageDissection.load), and the
    report; returns the report's index."""
    from ..files import atomic
    from ..report.labels import write_label_report

    result.to_csv(out)
    if kind == "images":
        result.save(out / "images.safetensors")
    tree = {"format": "fastdissect-labels", "version": 1, "labels": kind, "identity": result.identity,
            "layers": {name: layer.units for name, layer in result.items()}}
    atomic.write_text(out / "labels.json", json.dumps(tree, indent=1, default=str))
    return write_label_report(result, out / "report", verbose=verbose)


def summary_text(result, kind: str) -> str:
    """Per layer: how many units carry each of the most frequent labels."""
    from ..report.labels import label_counts

    lines = []
    for name, layer in result.items():
        n = layer.values.shape[0]
        source, by = ("tags", layer.metric) if kind == "images" else ("words", layer.similarity)
        common = ", ".join(f"{label} ({count})" for label, count in label_counts(layer.units)[:8])
        lines.append(f"{name}: {n} unit{'s' if n != 1 else ''} labelled from {source} by {by}; "
                     f"most common labels: {common}")
    return "\n".join(lines)
