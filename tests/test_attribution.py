"""Pixel attribution (fd.attribute) against Captum, the peer library, and plain autograd; the model
left as it was; its map on the explanation page and in `fastdissect explain --pixels`.

Equality with Captum is exact (torch.equal): fd.attribute runs the same torch ops on the same
batches in the same order (the same noise draws for SmoothGrad, the same quadrature nodes and
summation order for integrated gradients), so no float rounding separates the two. The one
tolerance is where the batches differ on purpose (integrated gradients image by image against
Captum's single batch of every image's steps): 1e-6 of the largest value, float32 rounding of a
50-term weighted sum.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.analyses.attribution import METHODS
from fastdissect.cli import main as cli
from fastdissect.cli.parser import build_parser
from test_analyses import SETTINGS, PooledHead
from test_report import assert_renders

captum_attr = pytest.importorskip("captum.attr")
CLASSES = 5


class SmallCNN(torch.nn.Module):
    """Two conv + ReLU + max-pool blocks and a linear head; inplace ReLUs on request."""

    def __init__(self, inplace=False, seed=0, size=(16, 20)):
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(inplace), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(inplace), torch.nn.MaxPool2d(2))
        self.head = torch.nn.Linear(8 * (size[0] // 4) * (size[1] // 4), CLASSES)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def batch(n=4, size=(16, 20), seed=1):
    """Random images, the last all zeros (every first-layer pre-activation is exactly its bias, and
    with a zero bias exactly 0: the ReLU masks' tie)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, *size), generator=g)
    x[-1] = 0
    return x


def zero_bias(model):
    with torch.no_grad():
        model.features[0].bias[:3] = 0
    return model


def captum(model, x, t, method, layer=None, samples=50, noise=0.15, steps=50, seed=0):
    """The same attribution by Captum (its defaults, or the argument named that makes them fd's)."""
    a = captum_attr
    t = [int(v) for v in t]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        if method == "gradient":
            return a.Saliency(model).attribute(x, target=t, abs=False)
        if method == "smoothgrad":
            torch.manual_seed(seed)  # Captum draws torch.normal from the global generator, image after image here
            return torch.cat([a.NoiseTunnel(a.Saliency(model)).attribute(
                x[i:i + 1], nt_type="smoothgrad", nt_samples=samples, stdevs=float(noise * (x[i].max() - x[i].min())),
                target=t[i], abs=False) for i in range(len(x))])
        if method == "deconvnet":
            return a.Deconvolution(model).attribute(x, target=t)
        if method == "guided_backprop":
            return a.GuidedBackprop(model).attribute(x, target=t)
        module = dict(model.named_modules())[layer] if layer else None
        if method == "gradcam":
            cam = a.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)
            return a.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
        if method == "guided_gradcam":
            return a.GuidedGradCam(model, module).attribute(x, target=t, interpolate_mode="bilinear")
        return torch.cat([a.IntegratedGradients(model).attribute(x[i:i + 1], target=t[i], n_steps=steps)
                          for i in range(len(x))])


def options(method):
    return {"layer": "features.3"} if method in ("gradcam", "guided_gradcam") else \
        {"samples": 6, "noise": 0.2, "seed": 3} if method == "smoothgrad" else \
        {"steps": 12} if method == "integrated_gradients" else {}


# ---- equal to Captum, and to autograd

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "inplace-relu"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_equals_captums(method, inplace, seed):
    model = zero_bias(SmallCNN(inplace, seed=seed)).eval()
    x = batch(seed=seed + 1)
    t = torch.tensor([0, 3, 1, 4]) if seed == 0 else \
        torch.randint(0, CLASSES, (4,), generator=torch.Generator().manual_seed(seed))
    ours = fd.attribute(model, x, t, method=method, **options(method))
    ref = captum(model, x, t, method, **options(method)).detach()
    assert ours.shape == ref.shape == ((4, 1, 16, 20) if method == "gradcam" else (4, 3, 16, 20))
    assert ours.dtype == torch.float32 and float(ref.abs().max()) > 0
    assert torch.equal(ours, ref)
    if method not in ("gradcam", "guided_gradcam"):  # the layer's ReLU keeps the maps of a zero image nonzero
        assert float(ours[:-1].abs().amax(dim=(1, 2, 3)).min()) > 0  # no image's map is silently empty


def test_methods_are_told_apart_on_one_input():
    """A check that the comparison above can fail: the rules do change the numbers."""
    model, x, t = SmallCNN().eval(), batch(), 2
    maps = {m: fd.attribute(model, x, t, method=m, **options(m)) for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            if a < b and maps[a].shape == maps[b].shape:
                assert not torch.allclose(maps[a], maps[b]), (a, b)


def test_integrated_gradients_on_one_batch_and_its_completeness():
    model, x = SmallCNN().eval(), batch(3, seed=4)
    t = torch.tensor([1, 2, 0])
    ours = fd.attribute(model, x, t, method="integrated_gradients", steps=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = captum_attr.IntegratedGradients(model).attribute(x, target=t, n_steps=64)
    assert torch.allclose(ours, whole, rtol=0, atol=1e-6 * float(whole.abs().max()))
    # completeness (Sundararajan et al.): the attributions sum to y_t(x) - y_t(0), up to the quadrature's
    # error at the ReLUs' kinks (the integrand is piecewise constant along the path)
    with torch.no_grad():
        gap = model(x).gather(1, t[:, None]).flatten() - model(torch.zeros_like(x)).gather(1, t[:, None]).flatten()
    assert torch.allclose(ours.sum(dim=(1, 2, 3)), gap, rtol=0, atol=0.01 * float(gap.abs().max()))
    assert float(gap.abs().min()) == 0 and float(gap.abs().max()) > 0.1  # the zero image: no gap, no attribution


def test_gradient_is_plain_autograd_and_target_none_is_the_predicted_class():
    model, x = SmallCNN().eval(), batch(seed=5)
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    predicted = logits.argmax(dim=1)
    logits[torch.arange(len(x)), predicted].sum().backward()
    assert torch.equal(fd.attribute(model, x, None), leaf.grad)
    assert torch.equal(fd.attribute(model, x, predicted.tolist()), leaf.grad)
    assert torch.equal(fd.attribute(model, x, None, method="guided_backprop"),
                       fd.attribute(model, x, predicted, method="guided_backprop"))


def test_verbose_shows_a_bar_over_the_images_and_changes_nothing(capsys):
    model, x = SmallCNN().eval(), batch(2)
    quiet = fd.attribute(model, x, 1, method="integrated_gradients", steps=5)
    assert capsys.readouterr().err == ""
    assert torch.equal(fd.attribute(model, x, 1, method="integrated_gradients", steps=5, verbose=True), quiet)
    assert "integrated gradients" in capsys.readouterr().err


def test_one_class_for_all_and_one_per_image():
    model, x = SmallCNN().eval(), batch()
    each = fd.attribute(model, x, [2, 2, 2, 2], method="deconvnet")
    assert torch.equal(fd.attribute(model, x, 2, method="deconvnet"), each)
    assert torch.equal(fd.attribute(model, x, np.array([2, 2, 2, 2]), method="deconvnet"), each)
    alone = torch.cat([fd.attribute(model, x[i:i + 1], 2, method="deconvnet") for i in range(4)])
    assert torch.allclose(alone, each, rtol=1e-6, atol=1e-9)


def test_the_relu_rules_by_hand_on_a_one_hidden_layer_network():
    """y = w2 . relu(W1 x), with pre-activations h = W1 x and g = w2 = dy/d relu(h): the gradient is
    W1^T (g [h > 0]), DeconvNet W1^T max(g, 0), guided backprop W1^T max(g [h > 0], 0): the chain
    rule written out, independent of any hook. h has a negative unit whose g is positive and a
    positive unit whose g is negative, so that the three differ."""
    lin1, lin2 = torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0], [0.5, 0.5, -2.0]]))
        lin2.weight.copy_(torch.tensor([[-1.5, 2.0, 1.0]]))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin1, torch.nn.ReLU(), lin2)
    x = torch.tensor([0.5, -0.25, -0.5]).view(1, 3, 1, 1)
    h, g = lin1.weight.detach() @ x.flatten(), lin2.weight.detach().flatten()
    assert h[0] > 0 > g[0] and h[1] < 0 < g[1] and h[2] > 0 < g[2]
    w = lin1.weight.detach()
    expected = {"gradient": w.T @ (g * (h > 0)), "deconvnet": w.T @ g.clamp(min=0),
                "guided_backprop": w.T @ (g * (h > 0)).clamp(min=0)}
    for method, value in expected.items():
        assert torch.allclose(fd.attribute(model, x, 0, method=method).flatten(), value, atol=1e-6), method
    assert len({tuple(v.tolist()) for v in expected.values()}) == 3


class SharedRelu(SmallCNN):
    """SmallCNN with one ReLU module called after both convolutions (a reused activation module)."""

    def __init__(self, inplace):
        super().__init__(inplace)
        self.features[4] = self.features[1]


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "inplace-relu"])
@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop", "guided_gradcam"])
def test_a_relu_module_called_twice_gets_its_rule_at_each_call(method, inplace):
    x, layer = batch(), {"layer": "features.3"} if method == "guided_gradcam" else {}
    shared = fd.attribute(SharedRelu(inplace).eval(), x, [1, 2, 3, 4], method=method, **layer)
    assert torch.equal(shared, fd.attribute(SmallCNN(inplace).eval(), x, [1, 2, 3, 4], method=method, **layer))


def test_smoothgrad_is_deterministic_for_a_seed_and_the_mean_of_noisy_gradients():
    model, x = SmallCNN().eval(), batch(2, seed=7)
    state = torch.get_rng_state()
    a = fd.attribute(model, x, 1, method="smoothgrad", samples=5, noise=0.3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the global one is left alone
    assert torch.equal(a, fd.attribute(model, x, 1, method="smoothgrad", samples=5, noise=0.3, seed=11))
    assert not torch.equal(a, fd.attribute(model, x, 1, method="smoothgrad", samples=5, noise=0.3, seed=12))
    g = torch.Generator().manual_seed(11)              # the documented draw, gradient by gradient
    for i in range(2):
        sigma = 0.3 * float(x[i].max() - x[i].min())
        noise = torch.randn((5, 3, 16, 20), generator=g) * sigma
        grads = [fd.attribute(model, (x[i] + noise[s])[None], 1)[0] for s in range(5)]
        assert torch.allclose(a[i], torch.stack(grads).mean(dim=0), rtol=1e-5, atol=1e-8)
    still = fd.attribute(model, x, 1, method="smoothgrad", samples=3, noise=0.0)  # (g + g + g) / 3: rounding only
    assert torch.allclose(still, fd.attribute(model, x, 1), rtol=1e-6, atol=0)


# ---- the model and the images left as they were

class Raiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("raised mid-way")
        return x


class Mixed(torch.nn.Module):
    """Batch norm and dropout (their eval mode differs), a frozen first conv, a module that raises."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.raiser = Raiser()
        self.drop = torch.nn.Dropout(0.5)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 8 * 10, CLASSES)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.raiser(self.relu(self.bn(self.conv(x)))))).flatten(1))


def snapshot(model):
    return {"state": copy.deepcopy(model.state_dict()),
            "modes": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                      for m in model.modules()]}


def assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["modes"] == after["modes"] and before["requires_grad"] == after["requires_grad"]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before["grads"], after["grads"]))
    assert before["hooks"] == after["hooks"]


def mixed_model():
    model = Mixed().train()
    model.drop.eval()                      # a mixed state: restored module by module, not by model.train()
    model.conv.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    return model


@pytest.mark.parametrize("method", METHODS)
def test_the_model_is_left_as_it_was_after_a_call_and_after_a_raise(method):
    model = mixed_model()
    before = snapshot(model)
    x = batch(2)
    kept = x.clone()
    layer = {"layer": "bn"} if method in ("gradcam", "guided_gradcam") else {}
    a = fd.attribute(model, x, [1, 4], method=method, samples=3, steps=4, **layer)
    assert float(a.abs().max()) > 0 and torch.isfinite(a).all()
    assert_same(before, snapshot(model))
    assert torch.equal(x, kept) and not x.requires_grad and x.grad is None
    # in eval mode: twice the same map (dropout off), and batch norm's running statistics untouched
    assert torch.equal(a, fd.attribute(model, x, [1, 4], method=method, samples=3, steps=4, **layer))
    model.raiser.armed = True
    with pytest.raises(RuntimeError, match="raised mid-way"):
        fd.attribute(model, x, [1, 4], method=method, samples=3, steps=4, **layer)
    model.raiser.armed = False
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam", "smoothgrad"])
def test_a_target_out_of_range_is_found_after_the_forward_and_leaves_no_hook(method):
    model = mixed_model()
    before = snapshot(model)
    layer = {"layer": "relu"} if method == "guided_gradcam" else {}
    with pytest.raises(ValueError, match=f"target 9 \\(image 1\\) is outside the model's {CLASSES} classes"):
        fd.attribute(model, batch(2), [0, 9], method=method, **layer)
    with pytest.raises(ValueError, match="target must be one class or one per image \\(2\\), got 3"):
        fd.attribute(model, batch(2), [0, 1, 2], method=method, **layer)
    assert_same(before, snapshot(model))


def test_a_model_used_under_no_grad_by_its_caller_still_gets_gradients():
    model, x = SmallCNN().eval(), batch()
    with torch.no_grad():
        a = fd.attribute(model, x, 1, method="guided_gradcam", layer="features.3")
    assert torch.equal(a, fd.attribute(model, x, 1, method="guided_gradcam", layer="features.3"))


# ---- inputs: one image, odd sizes, layouts, precision

@pytest.mark.parametrize("method", METHODS)
def test_one_image_of_odd_size(method):
    model = SmallCNN(size=(13, 19)).eval()
    x = batch(1, size=(13, 19), seed=9) + 0.5  # not the zero image
    opts = dict(options(method), layer="features.0") if method in ("gradcam", "guided_gradcam") else options(method)
    a = fd.attribute(model, x, 3, method=method, **opts)
    assert a.shape == ((1, 1, 13, 19) if method == "gradcam" else (1, 3, 13, 19))
    assert torch.equal(a, captum(model, x, [3], method, **opts).detach())


def test_non_contiguous_and_channels_last_inputs_give_the_contiguous_result():
    model, x = SmallCNN().eval(), batch()
    wide = torch.cat([x, x], dim=3)[..., ::2]  # a strided view
    assert not wide.is_contiguous()
    ref = fd.attribute(model, wide.contiguous(), 1, method="guided_backprop")
    assert torch.equal(fd.attribute(model, wide, 1, method="guided_backprop"), ref)
    last = x.to(memory_format=torch.channels_last)
    assert torch.allclose(fd.attribute(model, last, 1, method="gradcam", layer="features.3"),
                          fd.attribute(model, x, 1, method="gradcam", layer="features.3"), rtol=1e-5, atol=1e-8)


def test_half_precision_is_refused_against_a_float_model_and_computed_in_a_half_model():
    model, x = SmallCNN().eval(), batch() + 0.5
    with pytest.raises(ValueError, match="images are torch.float16 on cpu and the model's parameters torch.float32 "
                                         "on cpu: convert one"):
        fd.attribute(model, x.half(), 1)
    with pytest.raises(ValueError, match="images are torch.float64"):
        fd.attribute(model, x.double(), 1)
    double = copy.deepcopy(model).double()
    exact = fd.attribute(double, x.double(), 1, method="guided_backprop")
    assert exact.dtype == torch.float64
    assert torch.allclose(exact.float(), fd.attribute(model, x, 1, method="guided_backprop"), rtol=1e-4, atol=1e-7)
    try:
        half = fd.attribute(copy.deepcopy(model).half(), x.half(), 1, method="guided_backprop")
    except RuntimeError as exc:  # a build without half kernels on this device: torch's own error, not ours
        pytest.skip(f"no half-precision kernels here: {exc}")
    assert half.dtype == torch.float16
    # not pixel by pixel: half rounding can move a max-pool's argmax, and with it whole gradients
    cosine = torch.nn.functional.cosine_similarity(half.double().flatten(), exact.flatten(), dim=0)
    assert torch.isfinite(half).all() and float(cosine) > 0.98


# ---- errors

class FunctionalRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)
        self.fc = torch.nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_bad_arguments_are_named():
    model, x = SmallCNN().eval(), batch()
    nan = x.clone()
    nan[2, 1, 3, 4] = float("nan")
    cases = [
        (dict(method="lime"), ValueError, r"method must be one of \('gradient', 'smoothgrad'"),
        (dict(method="gradcam"), ValueError, 'method="gradcam" needs layer='),
        (dict(method="guided_gradcam", layer="features.7"), LookupError, "no layer 'features.7'; did you mean"),
        (dict(layer="features.3"), ValueError, 'layer is read by method="gradcam" and "guided_gradcam" only'),
        (dict(method="gradcam", layer="head"), ValueError,
         r"needs \(N, K, h, w\) maps at layer 'head', it gives \(4, 5\)"),
        (dict(samples=0), ValueError, "samples must be a positive int"),
        (dict(steps=2.0), TypeError, "steps must be a positive int"),
        (dict(noise=-0.1), ValueError, "noise must be a number >= 0"),
        (dict(seed="a"), TypeError, "seed must be an int"),
        (dict(verbose="no"), TypeError, "verbose must be"),
        (dict(target=-1), ValueError, "target must be a non-negative int"),
        (dict(target=5), ValueError, "target 5 is outside the model's 5 classes"),
        (dict(target=[0, 1, 2, 7]), ValueError, r"target 7 \(image 3\) is outside"),
        (dict(target=1.0), TypeError, "target must be a class id"),
        (dict(images=[np.zeros((16, 20, 3), np.uint8)]), TypeError,
         r"images must be the model's input, a float \(N, C"),
        (dict(images=x[0]), ValueError, r"images must be \(N, C, H, W\) .* got shape \(3, 16, 20\)"),
        (dict(images=x[:0]), ValueError, r"got shape \(0, 3, 16, 20\)"),
        (dict(images=(x * 255).to(torch.uint8)), TypeError, "images must be floating point"),
        (dict(images=nan), ValueError, "images: image 2 holds NaN or inf"),
    ]
    for kwargs, error, needle in cases:
        args = {"images": x, "target": 1, **kwargs}
        with pytest.raises(error, match=needle):
            fd.attribute(model, args.pop("images"), args.pop("target"), **args)
    with pytest.raises(ValueError, match="has none .*functional relu.* cannot be hooked"):
        fd.attribute(FunctionalRelu(), x, 0, method="deconvnet")
    assert fd.attribute(FunctionalRelu(), x, 0, method="gradcam", layer="conv").shape == (4, 1, 16, 20)
    unused = SmallCNN().eval()
    unused.spare = torch.nn.Conv2d(3, 3, 1)  # never called by the forward
    with pytest.raises(RuntimeError, match="layer 'spare' was not called by the model's forward pass"):
        fd.attribute(unused, x, 0, method="gradcam", layer="spare")
    with pytest.raises(TypeError, match="model must be"):
        fd.attribute(lambda v: v, x, 0)
    with pytest.raises(ValueError, match=r"the model must return \(4, classes\) logits, got \(4, 8, 4, 5\)"):
        fd.attribute(model.features, x, 0)


# ---- explain_prediction(pixels=...), its page and the command

@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    data = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("at") / "c", n_images=20, seed=3,
                                                  max_photo_share=0.1))
    model = PooledHead()
    return model, fd.dissect(model, ["body.pool"], data, **SETTINGS), data


@pytest.mark.parametrize("pixels", ["guided_gradcam", "smoothgrad"])
def test_explain_prediction_adds_the_pixel_map_of_the_explained_class(explained, pixels):
    model, d, data = explained
    images = [data.image(i) for i in range(3)]
    plain = fd.explain_prediction(model, "body.pool", images, d)
    ex = fd.explain_prediction(model, "body.pool", images, d, pixels=pixels)
    t = [e.target for e in ex]
    assert all(e.pixels is None and e.pixels_method is None for e in plain)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # SETTINGS: mean 0, std 1
    a = fd.attribute(model, x, t, method=pixels, **({"layer": "body.pool"} if "cam" in pixels else {}))
    for i, e in enumerate(ex):
        assert e.pixels_method == pixels and e.pixels.shape == images[i].shape[:2] and e.pixels.dtype == np.float64
        magnitude = a[i].abs().amax(dim=0).double().numpy()  # same size here: no resampling
        scale = np.quantile(magnitude, 0.99) or magnitude.max()  # a sparse map's percentile may be 0
        expected = np.clip(magnitude / scale, 0, 1)
        assert np.allclose(e.pixels, expected, atol=1e-12) and e.pixels.max() == 1.0
        assert e.units == plain[i].units and np.array_equal(e.heatmap, plain[i].heatmap)  # nothing else changes


def test_gradcam_of_attribute_is_the_explanations_heatmap(explained):
    """Two Grad-CAMs of one package: fd.attribute's (float32, F.interpolate bilinear) and the
    explanation's heatmap (float64, fastdissect's upsample), both over their max."""
    model, d, data = explained
    images = [data.image(i) for i in range(3)]
    ex = fd.explain_prediction(model, "body.pool", images, d)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    cam = fd.attribute(model, x, [e.target for e in ex], method="gradcam", layer="body.pool")[:, 0].double()
    for i, e in enumerate(ex):
        assert float(cam[i].max()) > 0
        assert np.allclose((cam[i] / cam[i].max()).numpy(), e.heatmap, rtol=0, atol=1e-5)


def test_explain_prediction_pixels_is_checked(explained):
    model, d, data = explained
    with pytest.raises(ValueError, match=r"pixels must be one of \('gradient'"):
        fd.explain_prediction(model, "body.pool", data.image(0), d, pixels="cam")


def test_the_page_shows_the_pixel_map_beside_the_heatmap(explained, tmp_path):
    model, d, data = explained
    ex = fd.explain_prediction(model, "body.pool", [data.image(i) for i in range(2)], d, pixels="guided_backprop")
    page = ex.write(tmp_path / "page")
    html = page.read_text()
    assert html.count('src="pixels_') == 2 and "guided backprop: pixel attribution" in html
    with Image.open(tmp_path / "page" / "pixels_0.png") as im:
        assert im.size == (data.image(0).shape[1], data.image(0).shape[0])
    with Image.open(tmp_path / "page" / "explained_0.png") as im:  # image, heatmap, pixels, units
        assert im.size[0] == (3 + len(ex[0].units)) * (data.image(0).shape[1] + 4)
    plain = fd.explain_prediction(model, "body.pool", data.image(0), d).write(tmp_path / "plain").read_text()
    assert "pixels_" not in plain and "pixel map" not in plain


def test_the_explain_command_takes_pixels(explained, tmp_path, capsys):
    model, d, data = explained
    results = d.save(tmp_path / "results")
    model_file = tmp_path / "head.py"
    model_file.write_text("from test_analyses import PooledHead\n\ndef make():\n    return PooledHead()\n")
    photo = tmp_path / "photo.png"
    Image.fromarray(data.image(3)).save(photo)
    out = tmp_path / "explain"
    assert cli.main(["explain", "--results", str(results), "--model", f"{model_file}:make", "--image", str(photo),
                     "--pixels", "guided_gradcam", "--out", str(out)]) == 0
    assert "image 0:" in capsys.readouterr().out
    assert (out / "pixels_0.png").is_file() and "guided gradcam: pixel attribution" in (out / "index.html").read_text()
    with pytest.raises(SystemExit):
        cli.main(["explain", "--results", str(results), "--model", f"{model_file}:make", "--image", str(photo),
                  "--pixels", "lime"])
    assert "invalid choice: 'lime'" in capsys.readouterr().err
    assert_renders(out / "index.html", tmp_path, "explain_pixels")


def test_the_commands_choices_are_the_methods():
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    pixels = next(a for a in explain._actions if a.dest == "pixels")
    assert tuple(pixels.choices) == METHODS and pixels.default is None
