"""fd.visualize: deterministic for a seed, the built red/green/blue detectors' images are their colour
and beat every top image of the built-in set, each objective equals a plain torch computation on the
returned image, the identity basis is the units bit for bit, and bad arguments are refused by name."""

import colorsys

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.analyses.visualization import params
from fastdissect.analyses.visualization.api import image_seed
from fastdissect.analyses.visualization.objectives import diversity

LITE = dict(mean=(0.498,) * 3, std=(0.502,) * 3)  # the demo model's normalisation
FAST = dict(steps=24, size=32, verbose=False)


class ColourNet(torch.nn.Module):
    """"colour": a 1x1 conv on the normalised input, unit 0 = R - (G + B) / 2 + 1/2 (red), 1 = G - (R + B) / 2
    + 1/2 (green), 2 = B - (R + G) / 2 + 1/2 (blue), then ReLU (the bias keeps a grey image's units alive:
    a unit dead at every position has no gradient to climb); "conv2": a seeded 3x3 conv + ReLU; "head": pooled, linear (5 classes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_((1.5 * torch.eye(3) - 0.5)[:, :, None, None])
            self.conv.bias.fill_(0.5)
        self.colour = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(3, 6, 3)
        self.mix = torch.nn.ReLU()
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x):
        y = self.mix(self.conv2(self.colour(self.conv(x))))
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net():
    return ColourNet().eval()


def model_input(images: np.ndarray, norm=LITE) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(norm["mean"])[:, None, None]) / torch.tensor(norm["std"])[:, None, None]


def layer_output(net, name: str, x: torch.Tensor) -> torch.Tensor:
    with fd.trace(net, [name]) as out, torch.no_grad():
        net(x)
    return out[name]


def test_bit_identical_for_one_seed_and_different_for_another(net):
    a = fd.visualize(net, "conv2", [0, 3, 5], seed=1, **FAST, **LITE)
    b = fd.visualize(net, "conv2", [0, 3, 5], seed=1, **FAST, **LITE)
    c = fd.visualize(net, "conv2", [0, 3, 5], seed=2, **FAST, **LITE)
    assert a.images.shape == (3, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.trace.shape == (3, 24) and a.trace.dtype == np.float64
    assert np.array_equal(a.images, b.images) and np.array_equal(a.trace, b.trace) and np.array_equal(a.values, b.values)
    assert not np.array_equal(a.images, c.images)
    assert a.settings["seed"] == 1 and a.settings["model"] == fd.identity.model_identity(net)


def test_a_units_image_does_not_depend_on_the_units_beside_it(net):
    together = fd.visualize(net, "conv2", [1, 4, 2], batch_size=2, **FAST, **LITE)
    alone = fd.visualize(net, "conv2", [4], **FAST, **LITE)
    assert np.abs(together.image(4).astype(int) - alone.image(4).astype(int)).max() <= 1
    np.testing.assert_allclose(together.trace[1], alone.trace[0], rtol=1e-4, atol=1e-6)


def test_the_identity_basis_is_the_units_bit_for_bit(net):
    units = fd.visualize(net, "conv2", [2, 5], **FAST, **LITE)
    basis = fd.visualize(net, "conv2", [2, 5], basis=torch.eye(6), **FAST, **LITE)
    assert np.array_equal(units.images, basis.images) and np.array_equal(units.trace, basis.trace)
    # a direction is a projection: feature 0 of a permuted basis is unit 5, its own seed aside
    permuted = fd.visualize(net, "conv2", [0], basis=torch.eye(6)[[5, 0, 1, 2, 3, 4]], **FAST, **LITE)
    out = layer_output(net, "conv2", model_input(permuted.images))
    assert permuted.values[0] == pytest.approx(float(out[0, 5].mean()), rel=1e-5)
    assert basis.settings["basis"].startswith("linear_basis:")


def test_a_sparse_autoencoders_feature_is_its_encoded_map(net):
    sae = fd.SparseAutoencoder(6, 8, 3, seed=0)
    grey = layer_output(net, "conv2", model_input(np.full((1, 32, 32, 3), 128, np.uint8)))
    active = torch.nonzero(sae.encode(grey).detach()[0].mean(dim=(1, 2)) > 0)[:2, 0].tolist()
    assert len(active) == 2  # features no position of a grey image activates have no gradient to climb
    v = fd.visualize(net, "conv2", active, basis=sae, steps=64, size=32, verbose=False, **LITE)
    out = layer_output(net, "conv2", model_input(v.images))
    expected = torch.stack([sae.encode(out).detach()[i, f].mean() for i, f in enumerate(active)])
    np.testing.assert_allclose(v.values, expected.double().numpy(), rtol=1e-5, atol=1e-7)
    assert (v.trace[:, -8:].mean(axis=1) > v.trace[:, :8].mean(axis=1)).all()  # the gradient came through the encoder


def mean_hue(image: np.ndarray) -> tuple[float, float]:
    """The saturation-weighted circular mean of the pixels' HSV hue (in [0, 1), red = 0), and the
    mean saturation."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in image.reshape(-1, 3)])
    angle = 2 * np.pi * hsv[:, 0]
    mean = np.arctan2((hsv[:, 1] * np.sin(angle)).sum(), (hsv[:, 1] * np.cos(angle)).sum()) / (2 * np.pi)
    return float(mean % 1.0), float(hsv[:, 1].mean())


BUILT = dict(steps=256, size=32, verbose=False)  # the built units' ascent: Distill's lr, a few hundred steps


@pytest.fixture(scope="module")
def built(net):
    return {param: fd.visualize(net, "colour", [0, 1, 2], param=param, **BUILT, **LITE) for param in PARAMS}


PARAMS = ("fourier", "pixel")


@pytest.mark.parametrize("param", PARAMS)
def test_the_built_colour_detectors_see_their_colour(built, param):
    v = built[param]
    for unit, (hue, channel) in enumerate([(0.0, 0), (1 / 3, 1), (2 / 3, 2)]):
        h, saturation = mean_hue(v.images[unit])
        assert min(abs(h - hue), 1 - abs(h - hue)) < 0.05 and saturation > 0.5, (unit, h, saturation)
        means = v.images[unit].reshape(-1, 3).mean(axis=0)
        assert means[channel] > max(np.delete(means, channel)) + 50, (unit, means)


def test_the_optimised_image_beats_every_top_image(net, built, tmp_path):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=40, seed=0))
    d = fd.dissect(net, ["colour"], ds, top_k=8, quantile=0.05, verbose=False, **LITE)
    v = built["fourier"]
    mine = layer_output(net, "colour", model_input(v.images)).mean(dim=(2, 3))
    for unit in range(3):
        tops = d["colour"].top_images[unit].tolist()
        theirs = layer_output(net, "colour", model_input(np.stack([ds.image(i) for i in tops])))[:, unit]
        assert float(mine[unit, unit]) > float(theirs.mean(dim=(1, 2)).max()), unit  # by the objective, the mean
        assert v.values[unit] == pytest.approx(float(mine[unit, unit]), rel=1e-6)


@pytest.mark.parametrize("objective, layer, units", [("channel", "conv2", [0, 3]), ("neuron", "conv2", [1, 2]),
                                                     ("layer", "conv2", None), ("class", "head", [0, 4])])
def test_each_objective_is_the_plain_torch_formula_on_the_returned_image(net, objective, layer, units):
    v = fd.visualize(net, layer, units, objective=objective, **FAST, **LITE)
    out = layer_output(net, layer, model_input(v.images))
    if objective == "channel":
        expected = [out[i, u].mean() for i, u in enumerate(units)]
    elif objective == "neuron":
        expected = [out[i, u, out.shape[2] // 2, out.shape[3] // 2] for i, u in enumerate(units)]
    elif objective == "layer":
        expected = [(out[0] ** 2).mean()]
    else:
        expected = [out[i, u] for i, u in enumerate(units)]
    assert v.units == (units or [0]) and v.objective == objective
    np.testing.assert_allclose(v.values, torch.stack(expected).double().numpy(), rtol=1e-5, atol=1e-7)
    assert v.trace[:, -4:].mean() > v.trace[:, :4].mean()  # the ascent raised it


def test_the_trace_starts_at_the_objective_of_the_initial_image(net):
    v = fd.visualize(net, "conv2", [3], transforms=None, **FAST, **LITE)
    start = params.initial("fourier", 32, torch.Generator().manual_seed(image_seed(0, 3, 0)))
    image = params.to_rgb(start[None], "fourier", 32, True)
    x = (image - torch.tensor(LITE["mean"])[:, None, None]) / torch.tensor(LITE["std"])[:, None, None]
    assert v.trace[0, 0] == pytest.approx(float(layer_output(net, "conv2", x)[0, 3].mean()), rel=1e-6)
    assert v.trace[0, -1] == pytest.approx(v.values[0], rel=0.05)  # no transforms: the last step is the image


def test_pixels_fourier_and_no_decorrelation_all_climb(net):
    for options in [dict(param="pixel"), dict(param="fourier", decorrelate=False), dict(transforms=None)]:
        v = fd.visualize(net, "conv2", [0], **options, **FAST, **LITE)
        assert v.trace[0, -1] > v.trace[0, 0], options
        assert v.settings["param"] == options.get("param", "fourier")


def test_the_fourier_basis_and_colour_matrix_are_distills():
    # irfft2 of a unit coefficient at frequency 0 is a constant 1 / S ("ortho"), scaled by S (1 / max(0, 1/S))
    spectrum = torch.zeros(1, 3, 16, 9, 2)
    spectrum[0, :, 0, 0, 0] = 1.0
    image = params.to_rgb(spectrum, "fourier", 16, False)
    assert torch.allclose(image, torch.sigmoid(torch.tensor(1.0 / params.FOURIER_DIVISOR)).expand_as(image))
    m = params.color_matrix()
    assert m.norm(dim=0).max() == pytest.approx(1.0) and m[0, 0] == pytest.approx(0.26 / m.new_tensor(
        params.COLOR_CORRELATION_SVD_SQRT).norm(dim=0).max())


def test_several_images_per_unit_are_pushed_apart_by_diversity(net):
    v = fd.visualize(net, "conv2", [0, 1], images_per_unit=3, diversity=1.0, **FAST, **LITE)
    assert v.all_images.shape == (2, 3, 32, 32, 3) and v.images.shape == (2, 32, 32, 3)
    assert v.all_traces.shape == (2, 3, 24) and v.all_values.shape == (2, 3)
    assert np.array_equal(v.images, v.all_images[:, 0]) and not np.array_equal(v.all_images[0, 0], v.all_images[0, 1])


def test_diversity_is_lucents_pairwise_gram_cosine():
    out = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    grams = [torch.nn.functional.normalize((a.flatten(1) @ a.flatten(1).T).flatten(), dim=0) for a in out]
    expected = sum(sum(float(grams[g * 3 + i] @ grams[g * 3 + j]) for i in range(3) for j in range(3) if i != j) / 3
                   for g in range(2))
    assert float(diversity(out, 3)) == pytest.approx(expected, rel=1e-5)
    assert float(diversity(out, 1)) == 0.0


def test_save_and_load_give_back_the_same_visualisation(net, tmp_path):
    v = fd.visualize(net, "conv2", [0, 5], images_per_unit=2, **FAST, **LITE)
    v.save(tmp_path / "vis")
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == [
        "unit_0_0.png", "unit_0_1.png", "unit_5_0.png", "unit_5_1.png", "visualization.json"]
    w = fd.Visualization.load(tmp_path / "vis")
    assert np.array_equal(w.all_images, v.all_images) and np.array_equal(w.all_traces, v.all_traces)
    assert w.units == v.units and w.settings == v.settings and w.layer == "conv2"
    v.figure(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_load_reads_only_the_units_pngs(net, tmp_path):
    import json

    v = fd.visualize(net, "conv2", [0], **FAST, **LITE)
    v.save(tmp_path / "vis")
    manifest = json.loads((tmp_path / "vis" / "visualization.json").read_text())
    manifest["files"] = [["../secret.png"]]
    (tmp_path / "vis" / "visualization.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a unit's PNG"):
        fd.Visualization.load(tmp_path / "vis")
    with pytest.raises(ValueError, match="no readable"):
        fd.Visualization.load(tmp_path)


@pytest.mark.parametrize("arguments, error, match", [
    (dict(objective="channels"), ValueError, "objective must be one of"),
    (dict(param="dct"), ValueError, "param must be one of"),
    (dict(transforms="strong"), ValueError, "transforms must be 'standard'"),
    (dict(transforms=[1]), ValueError, "transforms must be"),
    (dict(units=[0, 6]), ValueError, r"units\[1\] = 6 is out of range: layer 'conv2' has 6 units \(0..5\)"),
    (dict(units=[-1]), ValueError, r"units\[0\]"),
    (dict(units=3), TypeError, r"did you mean units=\[3\]"),
    (dict(layer="mixx"), LookupError, "no layer 'mixx'.*did you mean 'mix'"),
    (dict(size=7), ValueError, "size must be an int >= 8"),
    (dict(steps=0), ValueError, "steps must be a positive int"),
    (dict(lr=0.0), ValueError, "lr must be a number > 0"),
    (dict(basis=torch.eye(6), units=[6]), ValueError, "has 6 features in its basis"),
    (dict(basis=torch.eye(5)), ValueError, "basis is a \\(5, 5\\) basis over 5 channels"),
    (dict(basis=torch.eye(6), objective="layer"), ValueError, "basis= reads a feature's map"),
    (dict(objective="class"), ValueError, "objective 'class' reads a logit .* gives \\(1, 6, 30, 30\\)"),
    (dict(layer="head", objective="neuron"), ValueError, "objective 'neuron' reads the centre .* gives \\(1, 5\\)"),
    (dict(mean=(0.5, 0.5)), ValueError, "mean must have 3 entries"),
])
def test_bad_arguments_are_refused_by_name(net, arguments, error, match):
    call = dict(layer="conv2", units=[0], **FAST, **LITE)
    call.update(arguments)
    with pytest.raises(error, match=match):
        fd.visualize(net, call.pop("layer"), call.pop("units"), **call)
    assert not net.training and all(not m._forward_hooks for m in net.modules())


def test_the_model_keeps_its_mode_and_gradients_and_no_hook_is_left(net):
    net.train()
    net.conv.eval()  # a frozen submodule in a training model keeps its own mode
    net.conv.bias.requires_grad_(False)
    try:
        fd.visualize(net, "conv2", [0], **FAST, **LITE)
        assert net.training and not net.conv.training and all(not m._forward_hooks for m in net.modules())
        assert [p.requires_grad for p in net.parameters()] == [True, False, True, True, True, True]
        assert all(p.grad is None for p in net.parameters())
        with pytest.raises(ValueError):
            fd.visualize(net, "conv2", [9], **FAST, **LITE)
        assert net.training and [p.requires_grad for p in net.parameters()] == [True, False, True, True, True, True]
    finally:
        net.conv.bias.requires_grad_(True)
        net.eval()


def test_progress_bar_when_verbose(net, capsys):
    fd.visualize(net, "conv2", [0], steps=3, size=16, verbose=True, **LITE)
    assert "visualize conv2" in capsys.readouterr().err


def test_channel_on_a_layer_of_values_is_the_value(net):
    v = fd.visualize(net, "head", [2], **FAST, **LITE)
    out = layer_output(net, "head", model_input(v.images))
    assert v.values[0] == pytest.approx(float(out[0, 2]), rel=1e-6)


def test_a_visualisation_of_mismatched_parts_is_refused():
    with pytest.raises(ValueError, match=r"a Visualization of 2 units needs \(U, n, S, S, 3\) images"):
        fd.Visualization("l", "channel", [0, 1], np.zeros((1, 1, 8, 8, 3), np.uint8), np.zeros((2, 1, 3)),
                         np.zeros((2, 1)), {})
    with pytest.raises(ValueError, match="needs"):
        fd.Visualization("l", "channel", [0], np.zeros((1, 1, 8, 8, 3), np.uint8), np.zeros((1, 2, 3)),
                         np.zeros((1, 1)), {})
