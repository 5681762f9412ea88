"""fd.compositional against the dense numpy references in tests/reference.py: compexp's beam search
transcribed, and brute force over every formula of the space."""

import pytest
import torch

import fastdissect as fd
import reference as ref
from fastdissect.kernels import dispatch
from fastdissect.engine.compositional.sources import ActivationSource
from fastdissect.core.formula_masks import AND, AND_NOT, OR, combine, concept_set, unit_rows

BACKENDS = ["cpu", "cuda_emu", "torch"]


def random_case(seed, n=6, c=6, h=7, w=9, k=4, density=0.3, whole=True):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, c, h, w, generator=g) < density
    if whole:  # an image-level concept: whole images, and a concept that is absent everywhere
        masks[:, 1] = False
        masks[::2, 1] = True
    masks[:, c - 1] = False
    units = torch.rand(n, k, h, w, generator=g) < 0.35
    return masks, units


def to_ref(f):
    """fd.Formula -> the reference's tuple form (left-deep, as both searches build them)."""
    if isinstance(f, fd.Leaf):
        return ("leaf", f.concept)
    if isinstance(f.right, fd.Not):
        return ("andnot", to_ref(f.left), f.right.operand.concept)
    return ("or" if isinstance(f, fd.Or) else "and", to_ref(f.left), f.right.concept)


def check_counts(ex, units, masks, k):
    """The counts behind ex.iou[k] are those of ex.formulas[k], densely."""
    f_mask = ref.formula_dense(to_ref(ex.formulas[k]), masks.numpy())
    iou, inter, area = ref.dense_iou(f_mask, units[:, k].numpy())
    assert (int(ex.intersection[k]), int(ex.formula_area[k]), int(ex.unit_area[k])) == \
        (inter, area, int(units[:, k].sum()))
    return iou


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("length,beam_size,penalty", [(1, 3, 1.0), (2, 5, 1.0), (3, 3, 1.0), (3, 2, 0.9), (4, 2, 1.0)])
def test_beam_equals_compexp_transcription(seed, length, beam_size, penalty):
    masks, units = random_case(seed)
    ex = fd.compositional(units, masks, formula_length=length, beam_size=beam_size, penalty=penalty)
    for k in range(units.shape[1]):
        want = ref.beam_search(units[:, k].numpy(), masks.numpy(), length, beam_size, penalty)
        if want is None:
            assert ex.formulas[k] is None and ex.iou[k] == 0
            continue
        assert str(ex.formulas[k]) == ref.formula_text(want[0])
        assert ex.iou[k].item() == pytest.approx(want[1], rel=1e-12)
        assert str(ex.single[k]) == ref.formula_text(want[2]) and ex.single_iou[k].item() == pytest.approx(want[3])
        iou = check_counts(ex, units, masks, k)
        assert ex.iou[k].item() == pytest.approx(iou * penalty ** (len(ex.formulas[k]) - 1), rel=1e-12)


def test_beam_ties_keep_compexp_order():
    # Concepts 0, 2 and 3 are the same mask: every candidate ties with its copies; compexp keeps the
    # old beam first, then candidates in (beam, concept, op) order.
    masks, units = random_case(3, c=6)
    masks[:, 2] = masks[:, 0]
    masks[:, 3] = masks[:, 0]
    masks[:, 4] = ~masks[:, 0]  # disjoint from 0, covering the rest
    for length in (2, 3):
        ex = fd.compositional(units, masks, formula_length=length, beam_size=4)
        for k in range(units.shape[1]):
            want = ref.beam_search(units[:, k].numpy(), masks.numpy(), length, 4)
            assert str(ex.formulas[k]) == ref.formula_text(want[0])


@pytest.mark.parametrize("seed", range(20))
def test_optimal_equals_brute_force(seed):
    masks, units = random_case(100 + seed, n=5, c=5, h=5, w=6, k=2, density=0.25 + 0.02 * (seed % 5))
    penalty = 1.0 if seed % 4 else 0.85
    opt = fd.compositional(units, masks, formula_length=3, search="optimal", penalty=penalty)
    beam = fd.compositional(units, masks, formula_length=3, beam_size=2, penalty=penalty)
    for k in range(units.shape[1]):
        _, best = ref.brute_force_best(units[:, k].numpy(), masks.numpy(), 3, penalty)
        assert opt.iou[k].item() == pytest.approx(best, rel=1e-12)
        assert opt.iou[k] >= beam.iou[k]
        if opt.formulas[k] is not None:
            iou = check_counts(opt, units, masks, k)
            assert opt.iou[k].item() == pytest.approx(iou * penalty ** (len(opt.formulas[k]) - 1), rel=1e-12)
            assert opt.evaluated[k] > 0


def test_optimal_search_does_not_depend_on_its_batches_or_its_cache(monkeypatch):
    """Small pair batches (many rounds of bounds) and no cache of the pairs' counts (every unit counts
    them again) give the same formulas and counts, the brute-force best."""
    from fastdissect.engine.compositional.optimal import OptimalSearch

    masks, units = random_case(5, n=7, c=9, h=6, w=7, k=4, density=0.3)
    default = fd.compositional(units, masks, formula_length=3, search="optimal")
    monkeypatch.setattr(OptimalSearch, "PAIR_BATCH", 3)
    monkeypatch.setattr(OptimalSearch, "CACHE_BYTES", 0)
    small = fd.compositional(units, masks, formula_length=3, search="optimal")
    assert [str(f) for f in small.formulas] == [str(f) for f in default.formulas]
    for name in ("iou", "intersection", "formula_area"):
        assert torch.equal(getattr(small, name), getattr(default, name)), name
    for k in range(units.shape[1]):
        assert default.iou[k].item() == pytest.approx(ref.brute_force_best(units[:, k].numpy(), masks.numpy(), 3)[1])


@pytest.mark.parametrize("length", [1, 2])
def test_optimal_short_formulas(length):
    masks, units = random_case(7)
    opt = fd.compositional(units, masks, formula_length=length, search="optimal")
    for k in range(units.shape[1]):
        assert opt.iou[k].item() == pytest.approx(ref.brute_force_best(units[:, k].numpy(), masks.numpy(), length)[1])


def test_backends_and_threads_identical():
    masks, units = random_case(11, n=9, c=8, h=13, w=11, k=6)
    results = []
    for backend in BACKENDS:
        for search in ("beam", "optimal"):
            results.append(fd.compositional(units, masks, formula_length=3, search=search, backend=backend))
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(fd.compositional(units, masks, formula_length=3, search="optimal", backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        first = results[0] if r.settings["search"] == "beam" else results[1]
        assert [str(f) for f in r.formulas] == [str(f) for f in first.formulas]
        for name in ("iou", "intersection", "formula_area", "unit_area"):
            assert torch.equal(getattr(r, name), getattr(first, name)), name


def test_activations_path_matches_unit_masks():
    g = torch.Generator().manual_seed(5)
    acts = torch.relu(torch.randn(7, 5, 3, 4, generator=g))
    acts[:, 2] = 0.0  # an all-zero ReLU unit: never fires
    masks = torch.rand(7, 6, 9, 13, generator=g) < 0.3
    thr = torch.tensor([0.5, 0.8, 0.1, 0.3, 1.0], dtype=torch.float64)
    units = torch.stack([torch.stack([torch.from_numpy(ref.upsample(acts[n, k].numpy(), 9, 13) > float(thr[k]))
                                      for k in range(5)]) for n in range(7)])
    want = fd.compositional(units, masks, formula_length=3)
    for backend in BACKENDS:
        for x in (acts, acts.half(), acts.transpose(2, 3).contiguous().transpose(2, 3)):
            ex = fd.compositional(x, masks, thresholds=thr if x.dtype != torch.half else
                                  thr.half().double(), formula_length=3, backend=backend)
            if x.dtype == torch.half:
                continue  # other values: only that it runs
            assert [str(f) for f in ex.formulas] == [str(f) for f in want.formulas]
            assert torch.equal(ex.iou, want.iou)
    assert want.formulas[2] is None and want.iou[2] == 0 and want.unit_area[2] == 0


def test_default_thresholds_are_fd_score_s():
    g = torch.Generator().manual_seed(9)
    acts = torch.rand(6, 4, 5, 5, generator=g)
    masks = torch.rand(6, 5, 10, 10, generator=g) < 0.3
    ex = fd.compositional(acts, masks, quantile=0.05, formula_length=1)
    s = fd.score(acts, masks, quantile=0.05)
    assert torch.equal(ex.thresholds, s.thresholds)
    concept, iou = s.best()
    for k in range(4):
        assert ex.single_iou[k].item() == pytest.approx(float(iou[k]))


def test_formula_mask_and_text():
    masks, _ = random_case(2)
    f = (fd.Leaf(0) | fd.Leaf(2)) & ~fd.Leaf(3)
    assert str(f) == "((0 OR 2) AND (NOT 3))" and len(f) == 4
    assert fd.Formula.parse(str(f)) == f
    assert fd.Formula.parse("((1 AND (NOT 2)) OR 0)") == (fd.Leaf(1) & ~fd.Leaf(2)) | fd.Leaf(0)
    assert f.to_str(lambda c: f"c{c}") == "((c0 OR c2) AND (NOT c3))"
    dense = fd.formula_mask(f, masks).to_dense()[:, 0]
    want = (masks[:, 0] | masks[:, 2]) & ~masks[:, 3]
    assert torch.equal(dense, want)
    packed = fd.formula_mask(f, fd.pack_masks(masks))
    assert packed.offsets.diff().tolist() == want.flatten(1).any(1).long().tolist()  # empty images hold no entry
    assert torch.equal(fd.formula_mask((~fd.Leaf(1)), masks).to_dense()[:, 0], ~masks[:, 1])
    for bad in ("(1 AND", "(1 XOR 2)", "1 2", "(NOT)", "((1 OR 2) AND 3"):
        with pytest.raises(ValueError, match="formula"):
            fd.Formula.parse(bad)
    with pytest.raises(ValueError, match="concept 9"):
        fd.formula_mask(fd.Leaf(9), masks)


def test_formula_counts_kernel_against_dense():
    masks, units = random_case(21, n=8, c=7, h=9, w=15, k=3)
    cm = fd.pack_masks(masks)
    concepts = concept_set(cm)
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 7, (12,), generator=g)
    b = torch.randint(0, 7, (12,), generator=g)
    ops = [OR, AND, AND_NOT]
    for op in ops:
        formulas = combine(concepts, a, concepts, b, op)
        src = ActivationSource(units, cm, None, 0.005, "cpu")
        unit_set, _ = src.unit_masks([0, 1, 2])
        unit_of = torch.arange(12) % 3
        rows = unit_rows(formulas, unit_of, unit_set)
        dense_f = {OR: masks[:, a] | masks[:, b], AND: masks[:, a] & masks[:, b],
                   AND_NOT: masks[:, a] & ~masks[:, b]}[op]  # (N, 12, H, W)
        want_fl = torch.einsum("nfp,ncp->fc", dense_f.flatten(2).long(), masks.flatten(2).long())
        fu = dense_f & units[:, unit_of]
        want_flu = torch.einsum("nfp,ncp->fc", fu.flatten(2).long(), masks.flatten(2).long())
        assert torch.equal(formulas.areas(), dense_f.flatten(2).sum((0, 2)))
        for backend in BACKENDS:
            fl, flu = dispatch.formula_counts(backend, formulas, rows, unit_set.words, cm)
            assert torch.equal(fl, want_fl), backend
            assert torch.equal(flu, want_flu), backend


def test_one_image_odd_sizes_and_empty_units():
    masks = torch.zeros(1, 3, 1, 67, dtype=torch.bool)  # 67 pixels: a partial second word
    masks[0, 0, 0, :40] = True
    masks[0, 1, 0, 30:] = True
    masks[0, 2] = True
    units = torch.zeros(1, 3, 1, 67, dtype=torch.bool)
    units[0, 0, 0, 35:50] = True
    units[0, 1, 0, :] = True  # fires everywhere
    for search in ("beam", "optimal"):
        ex = fd.compositional(units, masks, formula_length=3, search=search)
        assert ex.formulas[2] is None and ex.iou[2] == 0
        for k in (0, 1):
            best = ref.brute_force_best(units[:, k].numpy(), masks.numpy(), 3)[1]
            assert ex.iou[k].item() <= best + 1e-12
            if search == "optimal":
                assert ex.iou[k].item() == pytest.approx(best)
        assert ex.iou[1] == 1.0


def test_bad_input_names_the_argument():
    masks, units = random_case(0)
    acts = torch.rand(6, 4, 3, 3)
    cases = [
        (dict(formula_length=0), "length"), (dict(beam_size=0), "beam_size"), (dict(search="greedy"), "search"),
        (dict(penalty=1.5), "penalty"), (dict(search="optimal", formula_length=4), "length <= 3"),
        (dict(units=[7]), "units"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ValueError, match=needle):
            fd.compositional(units, masks, **kwargs)
    with pytest.raises(ValueError, match="H x W"):
        fd.compositional(units[:, :, :3], masks)
    with pytest.raises(ValueError, match="images"):
        fd.compositional(units[:3], masks)
    with pytest.raises((TypeError, ValueError), match="activations"):
        fd.compositional(units.long(), masks)
    nan = acts.clone()
    nan[2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fd.compositional(nan, masks, thresholds=torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="no concept"):
        fd.compositional(units, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="thresholds"):
        fd.compositional(units, masks, thresholds=torch.zeros(4))


def test_rows_have_compexp_columns():
    masks, units = random_case(4)
    ex = fd.compositional(units, masks, formula_length=2)
    names = [f"n{c}" for c in range(6)]
    rows = ex.rows(names=names, categories=["cat"] * 6)
    assert list(rows[0]) == ["unit", "category", "label", "score", "length", "label_noncomp",
                             "category_noncomp", "score_noncomp"]
    for k, r in enumerate(rows):
        if ex.formulas[k] is not None:
            assert r["label"] == ex.formulas[k].to_str(names) and r["length"] == len(ex.formulas[k])


@pytest.mark.parametrize("old,new,value", [("length", "formula_length", 2), ("progress", "verbose", False)])
def test_old_keyword_names_warn_and_give_the_same_formulas(old, new, value):
    masks, units = random_case(5)
    want = fd.compositional(units, masks, **{new: value})
    with pytest.warns(DeprecationWarning, match=rf"compositional\({old}=\.\.\.\).*compositional\({new}=\.\.\.\)"):
        got = fd.compositional(units, masks, **{old: value})
    assert [str(f) for f in got.formulas] == [str(f) for f in want.formulas]
    assert torch.equal(got.iou, want.iou) and torch.equal(got.evaluated, want.evaluated)
    with pytest.raises(TypeError, match=f"got both {old}="):
        fd.compositional(units, masks, **{old: value, new: value})


def test_old_keyword_x_warns_and_gives_the_same_formulas():
    masks, units = random_case(6)
    acts = torch.rand(units.shape[0], units.shape[1], 3, 3, generator=torch.Generator().manual_seed(2))
    want = fd.compositional(acts, masks, formula_length=2)
    with pytest.warns(DeprecationWarning, match=r"compositional\(x=\.\.\.\).*compositional\(activations=\.\.\.\)"):
        got = fd.compositional(x=acts, masks=masks, formula_length=2)
    assert [str(f) for f in got.formulas] == [str(f) for f in want.formulas]
    assert torch.equal(got.iou, want.iou) and torch.equal(got.thresholds, want.thresholds)


def test_the_new_names_raise_no_warning_and_the_result_keeps_its_old_name():
    import warnings

    from fastdissect.engine import compositional as package

    masks, units = random_case(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = fd.compositional(activations=units, masks=masks, formula_length=2, verbose=False)
    assert isinstance(found, package.Formulas)
    with pytest.warns(DeprecationWarning, match="use fd.Formulas"):
        assert fd.Explanations is package.Formulas
    assert found.settings["length"] == 2  # the settings' key, as results files store it


def test_verbose_shows_a_progress_bar(capsys):
    masks, units = random_case(8)
    fd.compositional(units, masks, formula_length=1, verbose=True)
    assert "formulas (beam)" in capsys.readouterr().err
    fd.compositional(units, masks, formula_length=1)
    assert capsys.readouterr().err == ""


def test_package_modules_stay_short():
    """One concept per module, no class over about 200 lines, no function over about 60."""
    import ast
    from pathlib import Path

    from fastdissect.engine import compositional as package

    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                limit = 200 if isinstance(node, ast.ClassDef) else 60
                assert lines <= limit, f"{path.name}: {node.name} has {lines} lines"
