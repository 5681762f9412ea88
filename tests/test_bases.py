"""Bases of a layer: identity = the units bit for bit, an orthogonal basis = the same model with a 1x1
convolution appended, every basis of fd.compare_bases from one forward pass, its page in a browser."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.bases.basis import as_basis
from test_report import assert_renders

OPTIONS = dict(verbose=False, batch_size=8, top_k=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = fd.datasets.builtin(tmp_path_factory.mktemp("bases") / "data", n_images=24, image_size=48, label_size=24)
    return fd.datasets.Broden(root)


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3, stride=2))


def forward_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    return calls


def test_identity_basis_is_the_units_bit_for_bit(data):
    model = net()
    c = fd.compare_bases(model, "2", data, {"units": None, "identity": torch.eye(6)}, controls=(), **OPTIONS)
    units, ident = c.result("units").scores, c.result("identity").scores
    for field in ("intersection", "union", "iou", "thresholds"):
        assert torch.equal(getattr(units, field), getattr(ident, field)), field


def test_orthogonal_basis_equals_an_appended_convolution(data):
    model = net()
    q = fd.random_rotation(6, seed=3).matrix
    c = fd.compare_bases(model, "2", data, {"rotated": q}, controls=(), **OPTIONS)
    appended = torch.nn.Sequential(*model, torch.nn.Conv2d(6, 6, 1, bias=False))
    with torch.no_grad():
        appended[3].weight.copy_(q.float()[:, :, None, None])
    direct = fd.dissect(appended, ["3"], data, **OPTIONS)["3"]
    via_basis = c.result("rotated")
    torch.testing.assert_close(via_basis.scores.thresholds, direct.scores.thresholds, rtol=1e-5, atol=1e-6)
    assert np.abs(via_basis.scores.iou.numpy() - direct.scores.iou.numpy()).max() < 0.01
    assert [u["label"] for u in via_basis.units] == [u["label"] for u in direct.units]


def test_a_random_rotation_is_a_basis_and_a_transform_alike(data):
    from fastdissect.bases.basis import LinearBasis, as_basis

    r = fd.random_rotation(6, seed=2, power=0.6)
    assert isinstance(r, LinearBasis) and as_basis(r) is r
    as_basis_ = fd.dissect(net(), ["2"], data, basis={"2": r}, **OPTIONS)["2"].scores
    as_matrix = fd.dissect(net(), ["2"], data, basis={"2": r.matrix}, **OPTIONS)["2"].scores
    as_transform = fd.dissect(net(), ["2"], data, transform={"2": r}, **OPTIONS)["2"].scores
    for field in ("intersection", "union", "thresholds"):
        assert torch.equal(getattr(as_basis_, field), getattr(as_matrix, field)), field
        assert torch.equal(getattr(as_basis_, field), getattr(as_transform, field)), field
    assert r.fingerprint() != fd.random_rotation(6, seed=2, power=0.4).fingerprint()


def test_every_basis_from_one_forward_pass(data, tmp_path):
    model = net()
    sae = fd.SparseAutoencoder(6, 12, 2, seed=0)
    calls = forward_calls(model)
    c = fd.compare_bases(model, "2", data, {"units": None, "rotation": fd.random_rotation(6, seed=0), "sae": sae},
                         **OPTIONS)
    assert sum(calls) == len(data), f"forward calls on {calls} images"
    rows = c.table()
    assert [r["basis"] for r in rows] == ["units", "rotation", "sae"]
    assert [r["features"] for r in rows] == [6, 6, 12]
    for r in rows:
        res = c.result(r["basis"])
        detectors = [u for u in res.units if u["detector"]]
        assert r["interpretable"] == len(detectors)
        assert r["concepts_covered"] == len({u["label"] for u in detectors})
        assert r["beyond_chance"] == sum(u["beyond_chance"] for u in res.units)
    page = c.write(tmp_path / "bases", verbose=False)
    assert (tmp_path / "bases" / "bases.csv").read_text().startswith("basis,features,interpretable")
    assert_renders(page, tmp_path, "bases")


def test_a_basis_is_part_of_the_identity(data):
    model = net()
    a = fd.compare_bases(model, "2", data, {"q": fd.random_rotation(6, seed=0).matrix}, controls=(), **OPTIONS)
    b = fd.compare_bases(model, "2", data, {"q": fd.random_rotation(6, seed=1).matrix}, controls=(), **OPTIONS)
    assert as_basis(fd.random_rotation(6, seed=0).matrix).fingerprint() != \
        as_basis(fd.random_rotation(6, seed=1).matrix).fingerprint()
    assert a.dissection.identity != b.dissection.identity


@pytest.mark.parametrize("bases, match", [
    ({"q": torch.zeros(4, 5)}, "basis over 5 channels.*with 6 channels"),
    ({"bad": "rotation"}, "must be a .features, channels. tensor"),
    ({}, "non-empty dict"),
    ({"f": lambda x: x[:, :, :2]}, "must map the layer's"),
    ({"nan": torch.full((2, 6), float("nan"))}, "NaN"),
])
def test_bad_bases_are_named(data, bases, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fd.compare_bases(net(), "2", data, bases, controls=(), **OPTIONS)


def test_dissect_with_a_basis(data, tmp_path):
    model = net()
    plain = fd.dissect(model, ["2"], data, **OPTIONS)["2"]
    ident = fd.dissect(model, ["2"], data, basis={"2": torch.eye(6)}, **OPTIONS)["2"]
    for field in ("intersection", "union", "iou", "thresholds"):
        assert torch.equal(getattr(plain.scores, field), getattr(ident.scores, field)), field
    assert plain.basis is None and ident.basis.startswith("linear_basis:")
    sae = fd.SparseAutoencoder(6, 10, 3, seed=0)
    d = fd.dissect(model, ["2"], data, basis={"2": sae}, checkpoint=tmp_path / "ckpt", **OPTIONS)
    assert d["2"].num_units == 10 and d["2"].basis == sae.fingerprint()
    d.to_csv(tmp_path / "csv")
    assert (tmp_path / "csv" / "2.csv").read_text().startswith("feature,label")
    d.save(tmp_path / "results")
    assert fd.load(tmp_path / "results")["2"].basis == sae.fingerprint()
    with pytest.raises(Exception, match="transform|identity|differ"):
        fd.dissect(model, ["2"], data, basis={"2": fd.SparseAutoencoder(6, 10, 3, seed=1)},
                   checkpoint=tmp_path / "ckpt", **OPTIONS)
    with pytest.raises(LookupError, match="basis names layers that are not dissected"):
        fd.dissect(model, ["2"], data, basis={"0": torch.eye(8)}, **OPTIONS)


def test_resume_refuses_another_basis(data, tmp_path):
    from fastdissect.pipeline.checkpoint import CheckpointMismatch

    first = {"2": fd.random_rotation(6, seed=0)}
    fd.dissect(net(), ["2"], data, basis=first, checkpoint=tmp_path / "ck", **OPTIONS)
    with pytest.raises(CheckpointMismatch, match=r"another dissection: transforms.2: .random_rotation\(num_units=6, seed=0"):
        fd.dissect(net(), ["2"], data, basis={"2": fd.random_rotation(6, seed=1)}, checkpoint=tmp_path / "ck",
                   **OPTIONS)
    again = fd.dissect(net(), ["2"], data, basis=first, checkpoint=tmp_path / "ck", **OPTIONS)  # the same: resumes
    assert again["2"].basis is not None
