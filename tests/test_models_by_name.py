"""--model timm:<name> against a stand-in of the timm API fastdissect uses (create_model, the model's
pretrained_cfg, pretrained_cfg_overlay={"file": ...}) and of huggingface_hub.try_to_load_from_cache:
timm itself needs torchvision, which CI does not install. Nothing is downloaded."""

import sys
import types

import pytest
import torch

from fastdissect.cli import main as cli
from fastdissect.pipeline import models


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pretrained_cfg = {"input_size": (3, 48, 48), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                               "hf_hub_id": "timm/toy.test"}

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def fake_timm(monkeypatch, tmp_path):
    """timm and huggingface_hub stand-ins; `cache` maps (repo, file) to a path in the local cache."""
    calls, cache = [], {}

    def create_model(name, pretrained=False, pretrained_cfg_overlay=None):
        calls.append((name, pretrained, pretrained_cfg_overlay))
        if name != "toy":
            raise RuntimeError(f"Unknown model ({name})")
        model = Toy()
        if pretrained:  # timm reads the overlay's file instead of downloading
            model.load_state_dict(torch.load(pretrained_cfg_overlay["file"], weights_only=True))
        return model

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    hub = types.ModuleType("huggingface_hub")
    hub.try_to_load_from_cache = lambda repo, filename: cache.get((repo, filename))
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    return calls, cache


def saved_weights(path, value):
    state = {k: torch.full_like(v, value) for k, v in Toy().state_dict().items()}
    torch.save(state, path)
    return path


def test_weights_from_the_local_cache_then_random_with_a_warning(fake_timm, tmp_path):
    calls, cache = fake_timm
    cache[("timm/toy.test", "model.safetensors")] = str(saved_weights(tmp_path / "cached.pt", 0.5))
    model = models.load_model("timm:toy")
    assert torch.all(model.conv.weight == 0.5) and not model.training
    assert calls[-1] == ("toy", True, {"file": str(tmp_path / "cached.pt")})
    cache.clear()
    with pytest.warns(UserWarning, match=r"timm:toy has no --weights and no weights in timm's local cache"):
        random = models.load_model("timm:toy", seed=3)
    assert not torch.all(random.conv.weight == 0.5)
    with pytest.warns(UserWarning):
        again = models.load_model("timm:toy", seed=3)
    assert torch.equal(random.conv.weight, again.conv.weight)  # seeded


def test_weights_file_and_errors(fake_timm, tmp_path):
    model = models.load_model("timm:toy", str(saved_weights(tmp_path / "w.pt", 0.25)))
    assert torch.all(model.conv.weight == 0.25)
    with pytest.raises(models.ModelError, match=r"timm has no model 'nope' \(RuntimeError: Unknown model"):
        models.load_model("timm:nope")
    with pytest.raises(models.ModelError, match="weights file not found"):
        models.load_model("timm:toy", str(tmp_path / "missing.pt"))


def test_timm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(models.ModelError, match=r"timm is not installed: pip install 'fastdissect\[timm\]'"):
        models.load_model("timm:resnet18")


def test_the_pretrained_config_sets_size_and_normalisation(fake_timm, tmp_path, capsys):
    fake_timm[1][("timm/toy.test", "model.safetensors")] = str(saved_weights(tmp_path / "c.pt", 0.1))
    model = models.load_model("timm:toy")
    assert models.input_settings("timm:toy", model) == (48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert models.input_settings("my.py:build", model) == (None, None, None)  # only timm's config is read
    assert cli.main(["layers", "--model", "timm:toy"]) == 0
    assert "timm:toy on a 48x48 image" in capsys.readouterr().out
