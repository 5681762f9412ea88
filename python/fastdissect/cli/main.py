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
from . import labels, sae
from .common import layer_transform
from .common import model_and_data as _model_and_data
from .common import open_dataset as _open_dataset
from .parser import DEMO_MODEL, build_parser


def _mask_cache(args):
    """--mask-cache DIR, --no-mask-cache (argparse refuses both), or the default cache."""
    if getattr(args, "no_mask_cache", False):
        return False
    return getattr(args, "mask_cache", None) or True


def _dissect_options(args, image_size, mean, std, layers=()) -> dict:
    """fd.dissect's keyword arguments from the options every dissecting command shares."""
    quantile = args.quantile if args.quantile is not None else labels.MASK_QUANTILE
    return dict(transform=layer_transform(args, layers), quantile=quantile, iou_threshold=args.iou_threshold,
                union=args.union,
                batch_size=args.batch_size, num_workers=args.workers, device=args.device, cache=args.cache,
                passes=getattr(args, "passes", None), spill_dir=getattr(args, "spill_dir", None),
                mask_cache=_mask_cache(args),
                image_size=image_size, mean=mean, std=std, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, restart=args.restart, formula_length=args.formula_length,
                beam_size=args.beam_size, search=args.search, metric=args.metric or "iou",
                controls=tuple(c.replace("-", "_") for c in args.control), control_seed=args.control_seed,
                formula_layers=_names(args.formula_layers), control_layers=_names(args.control_layers),
                verbose=not args.quiet)


def _names(text: str | None) -> list[str] | None:
    """--formula-layers / --control-layers: comma-separated names, None when not given."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _run_dissection(args, model, layers, dataset, image_size, mean, std):
    import fastdissect as fd

    out = Path(args.out)
    start = time.perf_counter()
    result = fd.dissect(model, layers, dataset, **_dissect_options(args, image_size, mean, std, layers))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return result  # every rank holds the same results; rank 0 writes them
    index = _write_results(result, out, args.quiet, lambda: visualize_best(
        model, result, getattr(args, "visualize", 0), mean, std, out, not args.quiet,
        getattr(args, "visualize_layers", None), getattr(args, "visualize_steps", 256)))
    print(result.summary_text())
    print(f"results in {out}, report: {index} ({time.perf_counter() - start:.0f} s)")
    return result


def _write_results(result, out: Path, quiet: bool, visualize=None) -> Path:
    """CSVs, saved results and the report into OUT; returns the report's index. visualize: a
    function giving the report's visualisations, called once the results are saved (so that a
    failed visualisation loses no dissection)."""
    result.to_csv(out)
    result.save(out)
    shown = visualize() if visualize is not None else None
    return write_report(result, out / "report", visualizations=shown, verbose=not quiet)


def best_units(layer, n: int) -> list[int]:
    """The layer's n units whose label has the highest IoU (ties: the lower unit id)."""
    ranked = sorted(layer.units, key=lambda u: (-float(u["iou"]), int(u["unit"])))
    return [int(u["unit"]) for u in ranked[:n]]


def visualize_best(model, result, n: int, mean, std, out: Path | None, verbose: bool, layers=None,
                   steps: int = 256) -> dict | None:
    """{layer: fd.Visualization} of the n best units of each layer (of `layers`, default all), each
    saved into OUT/visualizations/<layer> when `out` is given; None when n is 0."""
    import fastdissect as fd

    if not n:
        return None
    shown = {}
    for name in layers or list(result):
        units = best_units(result[name], n)
        print(f"fastdissect: visualising units {', '.join(map(str, units))} of {name}")
        shown[name] = fd.visualize(model, name, units, steps=steps, mean=mean, std=std, verbose=verbose)
        if out is not None:
            shown[name].save(out / "visualizations" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    return shown


def cmd_dissect(args) -> None:
    layers = _names(args.layers)
    if args.labels != "masks":
        return labels.run(args, layers)
    if args.weights and any(ch in args.weights for ch in "*?["):
        return _dissect_checkpoints(args, layers)
    if args.visualize and args.tokens is not None:
        raise ValueError("--visualize reads a layer's maps: it does not take transformer tokens (--tokens)")
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


DEMO_VISUALIZE_STEPS = 128
DEMO_SMOOTHGRAD_SAMPLES = 16


def cmd_demo(args) -> None:
    from ..pipeline import models

    model = models.load_model(DEMO_MODEL)
    dataset = _open_dataset("builtin", Path(args.out), args.images)
    _, layers, mean, std = models.BUILTIN[DEMO_MODEL]
    print(f"fastdissect demo: {DEMO_MODEL} (ImageNet weights), layers {', '.join(layers)}, "
          f"{len(dataset)} images of the built-in concept set")
    # its best _bn1 units, in half the steps: 256 would add minutes to a one-minute demo on 2 cores
    last = {"formula_layers": args.formula_layers or layers[-1], "control_layers": args.control_layers or layers[-1]}
    args = argparse.Namespace(**{**vars(args), **last, "visualize_layers": layers[-1:],
                                 "visualize_steps": DEMO_VISUALIZE_STEPS})
    result = _run_dissection(args, model, layers, dataset, (224, 224), mean, std)
    _print_best_formulas(result[layers[-1]], 3)
    photo = next((i for i in range(9, len(dataset), 10)), 0)  # the built-in set's segmented photographs
    print(f"fastdissect demo: explaining the prediction on image {photo} (a photograph) with {layers[-1]}")
    # SmoothGrad beside Grad-CAM: the model's ReLU6 activations leave the ReLU-rule methods out. Each
    # noisy copy is a forward and a backward pass: 50 copies take 3-4 s on 2 cores, 16 about 1 s.
    explain_images(model, layers[-1], [dataset.image(photo)], result, Path(args.out) / "report" / "explain",
                   title=f"{DEMO_MODEL}, image {photo} of the built-in set", image_size=(224, 224), pixels="smoothgrad",
                   samples=DEMO_SMOOTHGRAD_SAMPLES)


def _print_best_formulas(layer, n: int) -> None:
    """The layer's n best units: label, formula and whether they beat the permuted control."""
    rows = {int(u["unit"]): u for u in layer.units}
    for unit in best_units(layer, n):
        u = rows[unit]
        # a formula's IoU is compexp's, over every image (a label's counts only images labelled in its category)
        formula = f"; formula {u['formula']} (global IoU {u['formula_iou']:.3f})" if u.get("formula") else ""
        chance = "" if "beyond_chance" not in u else \
            f"; {'beyond' if u['beyond_chance'] else 'not beyond'} chance (control IoU {u['control_best_iou']:.3f})"
        print(f"{layer.layer} unit {unit}: {u['label']} (IoU {u['iou']:.3f}){formula}{chance}")


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
    shown = None
    if args.visualize:
        model, mean, std = _dissected_model(args, result)
        shown = visualize_best(model, result, args.visualize, mean, std, None, True)
    print(f"report: {write_report(result, args.out, dataset, visualizations=shown)}")


def _dissected_model(args, result):
    """--model for `report --visualize`, refused unless it is the model the results were computed on;
    with the input normalisation the dissection recorded."""
    from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
    from ..files.identity import state_hash
    from ..pipeline import models

    if not args.model:
        raise ValueError("--visualize needs --model (and --weights): the model the results were computed on")
    model = models.load_model(args.model, args.weights, seed=args.seed)
    identity = getattr(result, "identity", None) or {}
    recorded = (identity.get("model") or {}).get("parameters")
    if recorded is not None and recorded != state_hash(model):
        raise ValueError(f"--model {args.model} is not the model the results were computed on (its weights differ "
                         "from those the results record): pass the dissected model and its --weights")
    return model, tuple(identity.get("mean") or IMAGENET_MEAN), tuple(identity.get("std") or IMAGENET_STD)


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
    page = explain_images(model, layer, args.image, results, out, target=args.target, attribution=args.method,
                          top_k=args.top, detectors_only=args.units == "detectors", class_names=names,
                          pixels=args.pixels)
    print(f"explanations: {page}")


def explain_images(model, layer, images, results, out: Path, *, class_names=None, title="", **options) -> Path:
    """Explains `images`, prints each prediction and its top units, writes the page, and links it from
    the results' report when the page is inside it."""
    import fastdissect as fd

    explanations = fd.explain_prediction(model, layer, images, results, **options)
    name = (lambda c: class_names[c] if class_names and c < len(class_names) else f"class {c}")  # noqa: E731
    for i, e in enumerate(explanations):
        units = ", ".join(f"{u['unit']} {u['label']} ({u['contribution']:+.3g})" for u in e.units) or "none"
        print(f"image {i}: {name(e.target)} (score {e.score:.3f}, p {e.probability:.3f}); labeled units carry "
              f"{100 * e.labeled_share:.0f}% of the evidence; top units: {units}")
    page = explanations.write(out, class_names=class_names, title=title)
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
    if args.command not in ("dissect", "rotate", "demo") and not getattr(args, "owns_out", False):
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
    commands = {"dissect": cmd_dissect, "rotate": cmd_rotate, "demo": cmd_demo, "builtin": cmd_builtin,
                "report": cmd_report, "compare": cmd_compare, "explain": cmd_explain, "broden": cmd_broden,
                "layers": cmd_layers, "selftest": cmd_selftest, "sae": sae.run}
    try:
        if args.command == "dissect":
            labels.check(args)  # the flags of another kind of labels are refused before --out is touched
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
