"""`fastdissect sae train` and `fastdissect sae compare`: a sparse autoencoder trained on one layer
(fd.train_sae), then the layer's units, a random rotation and the autoencoder's features dissected
side by side from one forward pass (fd.compare_bases), with the comparison's page and table."""

from __future__ import annotations

import warnings
from pathlib import Path

from .common import add_model_options, at_least, fraction, model_and_data, positive_number, unit_interval

DATASET_HELP = 'a Broden directory, a packed store (fd.datasets.pack), or "builtin" (generated once beside --out)'


def add_parser(sub) -> None:
    p = sub.add_parser("sae", help="train a sparse autoencoder on a layer, and compare its features with the units",
                       description="Sparse-autoencoder features of one layer: train them (TopK SAE, Gao et al. "
                                   "2024), then dissect them beside the layer's units and a random rotation.")
    actions = p.add_subparsers(dest="sae_command", required=True, metavar="ACTION")
    _add_train(actions)
    _add_compare(actions)


def _add_train(actions) -> None:
    p = actions.add_parser("train", help="train a TopK sparse autoencoder on a layer's activations (fd.train_sae)",
                           description="Train a TopK sparse autoencoder on every spatial position of a layer's "
                                       "maps over the data set, and save it (safetensors, no code).")
    add_model_options(p, tokens=False, dataset_help=DATASET_HELP,
                      seed_help="seed of everything random: the autoencoder's initialisation, the held-out images, "
                                "the order of training, and a model built without --weights (default 0)")
    p.add_argument("--layer", required=True, help="the module whose output the autoencoder learns")
    p.add_argument("--features", type=at_least(1), required=True, help="features of the autoencoder (F)")
    p.add_argument("--k", type=at_least(1), required=True, help="active features per position (k <= F)")
    p.add_argument("--out", required=True, help="the autoencoder's file (.safetensors)")
    p.add_argument("--epochs", type=at_least(1), default=1, help="passes over the training images (default 1)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--positions-per-step", type=at_least(1), default=4096,
                   help="positions per Adam step (default 4096)")
    p.add_argument("--lr", type=positive_number, default=4e-4, help="Adam's learning rate (default 4e-4)")
    p.add_argument("--holdout", type=fraction, default=0.1,
                   help="share of the images held out for the metrics (default 0.1)")
    p.add_argument("--checkpoint", default=None, help="a file to save the training state to, and resume from")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_compare(actions) -> None:
    p = actions.add_parser("compare", help="dissect the units, a random rotation and the SAE's features of a layer",
                           description="Dissect a layer's units, a seeded random rotation of them and a sparse "
                                       "autoencoder's features from one forward pass (fd.compare_bases, with the "
                                       "permuted control), and write the comparison's page, figures and table.")
    add_model_options(p, tokens=False, dataset_help=DATASET_HELP.replace("beside --out", "in --out"),
                      seed_help="seed of a model built without --weights: the one the SAE was trained on (default 0)")
    p.add_argument("--layer", required=True, help="the layer the autoencoder was trained on")
    p.add_argument("--sae", required=True, help="the autoencoder's file, written by `fastdissect sae train`")
    p.add_argument("--rotation-seed", type=int, default=0, help="seed of the random rotation (default 0)")
    p.add_argument("--out", required=True, help="directory of the page, its figures and bases.csv")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--quantile", type=fraction, default=0.005, help="top fraction above each threshold (0.005)")
    p.add_argument("--iou-threshold", type=unit_interval, default=0.04, help="IoU above which a feature is a detector")
    p.add_argument("--device", default=None, help="torch device (default: the model's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dissection", action="store_true",
                   help="also keep the dissection of every basis in OUT/dissection: its CSVs, its results (fd.load) "
                        "and its report, with each feature's top images")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")
    p.set_defaults(owns_out=True)  # --out is locked and its earlier contents replaced only with --overwrite


def run(args) -> None:
    (_train if args.sae_command == "train" else _compare)(args)


def _train(args) -> None:
    import fastdissect as fd

    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory: give the autoencoder's file, e.g. "
                                f"{out / 'sae.safetensors'}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} exists: pass --overwrite to replace it, or choose another file")
    if args.k > args.features:
        raise ValueError(f"--k {args.k} must be at most --features {args.features}")
    model, dataset, size, mean, std = model_and_data(args, root=out.parent)
    sae = fd.train_sae(model, args.layer, dataset, args.features, args.k, epochs=args.epochs,
                       batch_size=args.batch_size, positions_per_step=args.positions_per_step, lr=args.lr,
                       image_size=size, mean=mean, std=std, holdout=args.holdout, seed=args.seed,
                       checkpoint=args.checkpoint, verbose=not args.quiet)
    sae.save(out)
    m = sae.metrics
    print(f"sparse autoencoder of {args.layer} ({sae.num_channels} channels): {sae.num_features} features, k={sae.k}; "
          f"on {m['held_out_images']} held-out images ({m['held_out_positions']} positions): explained variance "
          f"{m['explained_variance']:.3f}, l0 {m['l0']:.2f}, dead {100 * m['dead_fraction']:.1f}%")
    print(f"saved to {out}")


def _checked_sae(path: str, layer: str, model):
    """The autoencoder of --sae, refused when it was trained on another layer."""
    import fastdissect as fd
    from ..files.identity import state_hash

    sae = fd.SparseAutoencoder.load(path)
    trained_on = sae.settings.get("layer")
    if trained_on is not None and trained_on != layer:
        raise ValueError(f"--sae {path} was trained on layer {trained_on!r}, not --layer {layer!r}")
    weights = sae.settings.get("model_weights")
    if weights is not None and weights != state_hash(model):
        warnings.warn(f"--sae {path} was trained on other weights of the model (another --weights or --seed?): "
                      "its features may not fit this model's activations", RuntimeWarning, stacklevel=2)
    return sae


def _compare(args) -> None:
    import fastdissect as fd

    model, dataset, size, mean, std = model_and_data(args)
    sae = _checked_sae(args.sae, args.layer, model)
    bases = {"units": None, "rotation": fd.random_rotation(sae.num_channels, seed=args.rotation_seed), "sae": sae}
    comparison = fd.compare_bases(model, args.layer, dataset, bases, batch_size=args.batch_size,
                                  quantile=args.quantile, iou_threshold=args.iou_threshold, device=args.device,
                                  image_size=size, mean=mean, std=std, verbose=not args.quiet)
    page = comparison.write(args.out, verbose=False)
    print(table_text(comparison.table()))
    print(f"comparison of the bases of {args.layer}: {page} (table: {Path(args.out) / 'bases.csv'})")
    if args.dissection:
        print(f"every basis dissected: {_keep_dissection(comparison.dissection, Path(args.out) / 'dissection', args)}")


def _keep_dissection(dissection, directory: Path, args) -> Path:
    """CSVs, the saved results and the report of the bases' dissection (features as units, one layer
    per basis: LAYER, LAYER@rotation, LAYER@sae); returns the report's index."""
    from ..report.pages import write_report

    dissection.to_csv(directory)
    dissection.save(directory)
    return write_report(dissection, directory / "report", verbose=not args.quiet)


def table_text(rows: list[dict]) -> str:
    """The comparison as aligned text: one row per basis."""
    head = ["basis", "features", "interpretable", "beyond chance", "unique detectors", "concepts covered",
            "median best IoU"]
    lines = [[r["basis"], str(r["features"]), f"{r['interpretable']} ({100 * r['interpretable_share']:.1f}%)",
              f"{r['beyond_chance']} ({100 * r['beyond_chance_share']:.1f}%)" if "beyond_chance" in r else "-",
              str(r["unique_detectors"]), str(r["concepts_covered"]), f"{r['median_best_iou']:.3f}"] for r in rows]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in [head, *lines])

