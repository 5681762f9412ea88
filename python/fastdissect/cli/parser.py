"""The `fastdissect` command line: one function per command's parser, and the options they share.

Every flag is checked here (argparse names it in its error); main.py runs the commands.
"""

from __future__ import annotations

import argparse

from .common import DEMO_MODEL
from .common import add_model_options as _add_model_options
from .common import at_least as _at_least
from .common import fraction as _fraction
from .common import unit_interval as _unit_interval
from .labels import add_options as _add_label_options
from .sae import add_parser as add_sae_parser


def _add_dissect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (CSVs, saved results, report)")
    p.add_argument("--batch-size", type=_at_least(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=_at_least(0), default=0, help="DataLoader workers (default 0)")
    p.add_argument("--quantile", type=_fraction, default=None, help="top fraction above each threshold (0.005; with "
                   "--labels images the share of images where a unit fires, for f1 and iou: 0.05)")
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
    p.add_argument("--formula-layers", default=None, metavar="NAMES",
                   help="comma-separated layers searched for formulas (default every dissected layer)")
    p.add_argument("--beam-size", type=_at_least(1), default=5, help="beam of the formula search (default 5)")
    p.add_argument("--search", choices=["beam", "optimal"], default="beam",
                   help="formula search: compexp's beam search or the proven optimum (length <= 3; with --labels "
                        "images every formula of the space scored)")
    p.add_argument("--control", action="append", choices=["permuted", "random-init"], default=[],
                   help="a chance baseline (repeatable): permuted (units against other images' masks, in the same "
                        "pass) or random-init (the same architecture with seeded random weights, same settings)")
    p.add_argument("--control-layers", default=None, metavar="NAMES",
                   help="comma-separated layers the controls apply to (default every dissected layer)")
    p.add_argument("--control-seed", type=int, default=0,
                   help="seed of the permutation and of the random weights of the controls (default 0)")
    p.add_argument("--metric", choices=["iou", "f1", "precision", "recall", "coverage", "auroc", "auprc", "correlation"],
                   default=None, help="what ranks each unit's labels and meets --iou-threshold (default iou, "
                   "NetDissect's; with --labels images: auroc (default), auprc, correlation, f1 or iou)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier (or interrupted) result in --out: it stays loadable until this run's "
                        "replaces it, and what fastdissect wrote there before and this run did not rewrite is "
                        "removed once the run succeeds")


def _add_visualize_option(p: argparse.ArgumentParser, default: int = 0, which: str = "each layer",
                          steps: int = 256) -> None:
    p.add_argument("--visualize", type=_at_least(0), default=default, metavar="N",
                   help=f"feature-visualise the N best units (by their label's IoU) of {which} and show them on "
                        f"their report pages (fd.visualize: 128 px, {steps} steps; default {default})")


def add_dissect_parser(sub) -> None:
    p = sub.add_parser("dissect", help="dissect layers of a model on a concept data set",
                       description="Label every unit of the given layers with the concept it detects.")
    _add_model_options(p)
    p.add_argument("--layers", required=True, help="comma-separated module names (see model.named_modules())")
    _add_dissect_options(p)
    _add_label_options(p)
    _add_visualize_option(p)


def add_rotate_parser(sub) -> None:
    p = sub.add_parser("rotate", help="the axis-alignment test: dissect a layer under random rotations",
                       description="Dissect one layer rotated by Q ** p for each power p (Q a seeded random "
                                   "rotation of its units) in one run over the data, and draw the curve of "
                                   "interpretability against the power.")
    _add_model_options(p)
    p.add_argument("--layer", required=True, help="the module to rotate (see model.named_modules())")
    p.add_argument("--powers", default="0,0.2,0.4,0.6,0.8,1", help="rotation powers in [0, 1] (default "
                   "0,0.2,0.4,0.6,0.8,1)")
    p.add_argument("--rotation-seed", type=int, default=0, help="seed of the random rotation (default 0)")
    _add_dissect_options(p)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help=f"dissect {DEMO_MODEL} (ImageNet weights) on the built-in concept set",
                       description=f"Dissect five layers of {DEMO_MODEL}, early to late, on the built-in concept "
                                   "set, offline, with formulas of up to 3 concepts and the permuted control on the "
                                   "last layer (--formula-layers, --control-layers). Needs the demo extra: pip "
                                   "install 'fastdissect[demo]'.")
    p.add_argument("--images", type=_at_least(1), default=512, help="images in the built-in concept set (default 512)")
    _add_dissect_options(p)
    # What sets fastdissect apart, within the forward pass's time: formulas and the permuted control,
    # on the last layer (cmd_demo), where the concepts are.
    p.set_defaults(formula_length=3, control=["permuted"])
    _add_visualize_option(p, 5, "the last layer (_bn1)", 128)


def add_builtin_parser(sub) -> None:
    p = sub.add_parser("builtin", help="write the built-in concept set (Broden layout)",
                       description="Generate the built-in concept set into a directory, in the Broden layout.")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--images", type=_at_least(1), default=512, help="number of images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="write the HTML report of a saved dissection",
                       description="Write the static HTML report of results saved by `fastdissect dissect`.")
    p.add_argument("--results", required=True, help="a results directory (written by dissect: manifest.json)")
    p.add_argument("--dataset", default=None,
                   help="the concept data set for the top images (default: the one recorded in the results)")
    p.add_argument("--out", required=True, help="directory to write the report to")
    p.add_argument("--allow-changed-dataset", action="store_true",
                   help="draw the top images from a data set that differs from the one the results were computed "
                        "on (refused by default: its images would stand beside another data set's numbers)")
    _add_visualize_option(p)
    p.add_argument("--model", default=None, help="the dissected model (as for dissect), for --visualize")
    p.add_argument("--weights", default=None, help="its weights file (as for dissect)")
    p.add_argument("--seed", type=int, default=0, help="seed of a model built without --weights (as for dissect)")


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare saved dissections (models, layers, checkpoints)",
                       description="One HTML page with figures and CSVs comparing saved dissections: unique "
                                   "detectors per category, concepts only one model finds, units whose label changed.")
    p.add_argument("results", nargs="+", help="results directories, in order (DIR/random_init: the random-init "
                   "control of the result in DIR)")
    p.add_argument("--names", default=None, help="comma-separated names, one per directory (default: their names)")
    p.add_argument("--series", action="store_true",
                   help="the directories are checkpoints of one model: draw lines over training iterations")
    p.add_argument("--out", required=True, help="directory to write the page to")


def add_explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain predictions by the labeled units of a dissected layer",
                       description="Explain the model's prediction on each image by the units of a dissected layer "
                                   "(Grad-CAM, CAM or gradient x activation), optionally beside a pixel-attribution "
                                   "map (--pixels), and write a page per run.")
    p.add_argument("--results", required=True, help="a results directory written by dissect")
    p.add_argument("--model", required=True, help="the dissected model (as for dissect)")
    p.add_argument("--weights", default=None, help="its weights file (as for dissect)")
    p.add_argument("--seed", type=int, default=0, help="seed of a model built without --weights (as for dissect)")
    p.add_argument("--image", action="append", required=True, help="an image file (repeatable)")
    p.add_argument("--layer", default=None, help="the layer to explain with (default: the results' last layer)")
    p.add_argument("--target", type=_at_least(0), default=None, help="the class to explain (default: the predicted one)")
    p.add_argument("--method", choices=["gradcam", "cam", "gradient x activation"], default="gradcam",
                   help="how units are credited (default gradcam; cam: for a global-average-pool + linear head)")
    p.add_argument("--pixels", choices=["gradient", "smoothgrad", "deconvnet", "guided_backprop", "guided_gradcam",
                                        "gradcam", "integrated_gradients"], default=None,
                   help="add a pixel-attribution map beside the heatmap (fd.attribute's method; default none)")
    p.add_argument("--top", type=_at_least(1), default=5, help="units shown per image (default 5)")
    p.add_argument("--units", choices=["detectors", "all"], default="detectors", help="rank detectors only (default)")
    p.add_argument("--classes", default=None, help="a text file of class names, one per line")
    p.add_argument("--out", default=None, help="directory of the page (default: RESULTS/report/explain, linked "
                   "from the report)")


def add_broden_parser(sub) -> None:
    p = sub.add_parser("broden", help="download Broden, or rebuild a Broden-layout data set at another size",
                       description="Broden, the concept data set of Network Dissection.")
    brs = p.add_subparsers(dest="broden_command", required=True, metavar="ACTION")
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


def add_layers_parser(sub) -> None:
    p = sub.add_parser("layers", help="list a model's layers with their output shapes",
                       description="List every named module of a model with its output shape on one blank image, "
                                   "to choose --layers.")
    p.add_argument("--model", required=True, help="the model (as for dissect)")
    p.add_argument("--weights", default=None, help="its weights file (as for dissect)")
    p.add_argument("--image-size", type=_at_least(8), default=None,
                   help="input size (default: the model's expected size, else 224)")
    p.add_argument("--maps", action="store_true", help="only layers with (N, K, h, w) map outputs")


def add_selftest_parser(sub) -> None:
    p = sub.add_parser("selftest", help="check the kernels against the torch reference",
                       description="Run the kernels of a backend against the in-package torch reference.")
    p.add_argument("--backend", choices=["cuda", "cuda_emu", "cpu"], default=None,
                   help="kernels to check (default: cuda with a GPU, else cuda_emu)")


COMMANDS = (add_dissect_parser, add_rotate_parser, add_demo_parser, add_builtin_parser, add_report_parser,
            add_compare_parser, add_explain_parser, add_broden_parser, add_layers_parser, add_selftest_parser,
            add_sae_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdissect", description="Fast, exact Network Dissection.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS keeps the one before)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser
