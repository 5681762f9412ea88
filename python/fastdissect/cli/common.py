"""What the commands share: argparse types, the model and input options, and turning them into a
model, a data set and input settings. Lives apart from parser.py and main.py so that command modules
(cli/sae.py, cli/labels.py) use the same flags and the same loading as `dissect` without a cycle."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_MODEL = "efficientnet-lite0"


def at_least(low: int):
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


def fraction(text: str) -> float:
    return _number(text, 0.0, 1.0, closed=False)


def unit_interval(text: str) -> float:
    return _number(text, 0.0, 1.0, closed=True)


def positive_number(text: str) -> float:
    return _number(text, 0.0, float("inf"), closed=False)


def add_model_options(p: argparse.ArgumentParser, *, tokens: bool = True,
                      dataset_help: str = 'a Broden directory, a packed store (fd.datasets.pack), or "builtin" '
                                          "(generated in OUT)",
                      seed_help: str = "seed of the random initialisation of a model built without --weights "
                                       "(default 0)") -> None:
    p.add_argument("--model", required=True,
                   help=f"a built-in name ({DEMO_MODEL}), timm:<name> (weights from --weights or timm's local cache), "
                        "torchvision:<name> (with --weights), or file.py:factory")
    p.add_argument("--weights", default=None, help="weights file (state dict) for timm:, torchvision: or file.py models")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--dataset", required=True, help=dataset_help)
    p.add_argument("--image-size", type=at_least(8), default=None,
                   help="resize images to this square size for the model (default: the model's expected size for "
                        "built-in models, else the data set's images as stored)")
    if tokens:
        p.add_argument("--tokens", type=at_least(0), default=None, metavar="N",
                       help="the layers output (N, tokens, C) transformer tokens: drop the first N (class/register "
                            "tokens) and lay the rest out as a square grid of maps (fd.token_grid)")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="input normalisation mean (ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, default=None, help="input normalisation std (ImageNet's)")


def open_dataset(spec: str, out: Path, images: int = 512):
    """--dataset: "builtin" (generated once into OUT/concepts), a packed store or a Broden directory."""
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


def model_and_data(args, *, root: Path | None = None, opener=open_dataset):
    """The model, data set and input settings named by --model, --weights, --seed, --dataset,
    --image-size, --mean, --std; the data set opened by `opener(spec, root)` (root: where
    "builtin" is generated, default --out)."""
    from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
    from ..pipeline import models

    model = models.load_model(args.model, args.weights, seed=args.seed)
    expected_side, expected_mean, expected_std = models.input_settings(args.model, model)
    mean = tuple(args.mean) if args.mean else (expected_mean or IMAGENET_MEAN)
    std = tuple(args.std) if args.std else (expected_std or IMAGENET_STD)
    side = args.image_size or expected_side
    size = (side, side) if side else None
    dataset = opener(args.dataset, Path(args.out) if root is None else root)
    if size:
        why = "--image-size" if args.image_size else "the model's expected size"
        print(f"fastdissect: feeding the model {size[0]}x{size[1]} images ({why})")
    else:
        image = dataset.image(0) if hasattr(dataset, "image") else None
        stored = f"{image.shape[0]}x{image.shape[1]} " if image is not None else ""
        print(f"fastdissect: feeding the model the data set's {stored}images as stored (--image-size to resize)")
    return model, dataset, size, mean, std


def layer_transform(args, layers) -> dict | None:
    """--tokens N: fd.token_grid(N) on every layer, else None."""
    import fastdissect as fd

    tokens = getattr(args, "tokens", None)
    return {name: fd.token_grid(tokens) for name in layers} if tokens is not None else None
