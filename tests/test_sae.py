"""Sparse autoencoders: the TopK model against its formula, its files, its training (dictionary
recovery, determinism, exact resume) and fd.train_sae's metrics against a direct computation."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.bases.sae_training import SAESettings, SAETrainer
from fastdissect.files.tensorfile import UnsafeFileError


def reference_encode(sae, x: np.ndarray) -> np.ndarray:
    """The TopK encoder by its definition, in float64 numpy, one position at a time."""
    w = sae.encoder.detach().double().numpy()
    b = sae.encoder_bias.detach().double().numpy()
    pre_bias = sae.pre_bias.detach().double().numpy()
    s = float(sae.input_scale)
    out = np.zeros((x.shape[0], w.shape[0]))
    for i, row in enumerate(x):
        pre = w @ (s * row - pre_bias) + b
        top = np.argsort(-pre, kind="stable")[: sae.k]
        out[i, top] = np.maximum(pre[top], 0)
    return out


def sparse_dictionary(num_channels, num_atoms, k, n, seed=1):
    """n samples, each a positive combination of k atoms of a random unit-norm dictionary."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(num_channels, num_atoms, generator=g)
    atoms /= atoms.norm(dim=0)
    chosen = torch.rand(n, num_atoms, generator=g).argsort(1)[:, :k]
    coef = torch.zeros(n, num_atoms).scatter_(1, chosen, torch.rand(n, k, generator=g) + 0.5)
    return atoms, coef @ atoms.t()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = fd.datasets.builtin(tmp_path_factory.mktemp("sae") / "data", n_images=10, image_size=32, label_size=16)
    return fd.datasets.Broden(root)


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 8, 3))


def test_encode_matches_the_formula_and_keeps_at_most_k():
    sae = fd.SparseAutoencoder(8, 20, 3, seed=2)
    with torch.no_grad():
        sae.encoder_bias.normal_()
        sae.pre_bias.normal_()
        sae.input_scale.fill_(0.7)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    z = sae.encode(x.float()).detach()
    rows = x.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
    want = reference_encode(sae, rows).reshape(2, 5, 3, 20).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(z.double().numpy(), want, rtol=1e-5, atol=1e-5)
    assert int((z != 0).sum(1).max()) <= 3
    recon = sae.decode(z).detach()
    direct = (torch.einsum("cf,nfhw->nchw", sae.decoder.detach(), z) + sae.pre_bias.detach()[:, None, None]) / 0.7
    torch.testing.assert_close(recon, direct)


def test_encode_checks_its_input():
    sae = fd.SparseAutoencoder(8, 20, 3)
    with pytest.raises(ValueError, match=r"\(N, 8, h, w\)"):
        sae.encode(torch.zeros(2, 7, 3, 3))
    with pytest.raises(ValueError, match="k must be"):
        fd.SparseAutoencoder(8, 4, 5)


def test_save_and_load_round_trip(tmp_path):
    sae = fd.SparseAutoencoder(8, 20, 3, seed=5)
    sae.metrics = {"l0": 2.5}
    path = sae.save(tmp_path / "sae.safetensors")
    back = fd.SparseAutoencoder.load(path)
    x = torch.randn(3, 8, 4, 4)
    assert torch.equal(back.encode(x).detach(), sae.encode(x).detach()) and back.k == 3 and back.metrics == {"l0": 2.5}
    assert back.fingerprint() == sae.fingerprint()
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(UnsafeFileError, match="damaged"):
        fd.SparseAutoencoder.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="no sparse autoencoder"):
        fd.SparseAutoencoder.load(tmp_path / "none.safetensors")


def test_fingerprint_follows_the_weights():
    a, b = fd.SparseAutoencoder(8, 20, 3, seed=0), fd.SparseAutoencoder(8, 20, 3, seed=1)
    assert a.fingerprint() != b.fingerprint()
    assert fd.SparseAutoencoder(8, 20, 4, seed=0).fingerprint() != a.fingerprint()


def test_training_recovers_a_sparse_dictionary():
    atoms, x = sparse_dictionary(16, 32, 3, 1 << 16)
    sae = fd.SparseAutoencoder(16, 64, 3, seed=0)
    trainer = SAETrainer(sae, SAESettings(lr=2e-3, batch_size=1024, dead_after=4096))
    for _ in range(15):
        trainer.fit_chunk(x)
    best = (atoms.t() @ sae.decoder.detach()).max(dim=1).values  # each atom's closest feature
    assert (best >= 0.9).float().mean() >= 0.9, best
    norms = sae.decoder.detach().norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_dead_features_are_revived():
    _, x = sparse_dictionary(16, 32, 3, 1 << 14)
    kept = {}
    for aux_coef in (0.0, 1 / 32):
        sae = fd.SparseAutoencoder(16, 64, 3, seed=0)
        with torch.no_grad():  # half the features start far below the others: never in the top k
            sae.encoder_bias[:32] = -3.0
        trainer = SAETrainer(sae, SAESettings(lr=2e-3, batch_size=512, dead_after=2048, aux_coef=aux_coef))
        for _ in range(4):
            trainer.fit_chunk(x)
        kept[aux_coef] = float(((trainer.positions - trainer.last_active) < 2048).float().mean())
    assert kept[0.0] == 0.5 and kept[1 / 32] >= 0.7, kept  # without AuxK none of the 32 comes back


def test_train_sae_is_seeded_and_reports_its_metrics(data):
    net = tiny_net()
    a = fd.train_sae(net, "2", data, num_features=12, k=2, chunk_positions=300, verbose=False)
    b = fd.train_sae(net, "2", data, num_features=12, k=2, chunk_positions=300, verbose=False)
    for (name, t), u in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(t, u), name
    m = a.metrics
    assert m["held_out_images"] == 1 and m["held_out_positions"] == 28 * 28
    assert 0 < m["l0"] <= 2 and 0 <= m["dead_fraction"] < 1
    # explained variance, computed directly on the held-out image
    held = [i for i in range(len(data)) if i not in _trained_images(data, seed=0)]
    x = fd.datasets.sample.to_model_input(torch.from_numpy(np.stack([data[i].image for i in held])))
    with torch.no_grad(), fd.trace(net, ["2"]) as acts:
        net(x)
    act = acts["2"].double()
    err = (act - a(act.float()).detach().double()).pow(2).sum()
    var = (act - act.mean(dim=(0, 2, 3), keepdim=True)).pow(2).sum()
    assert m["explained_variance"] == pytest.approx(1 - float(err / var), rel=1e-6)
    assert a.settings["layer"] == "2" and a.settings["k"] == 2


def _trained_images(data, seed):
    from fastdissect.pipeline.sae import _Plan  # the plan is what decides; the test recomputes the rest
    return set(_Plan.of(len(data), 0.1, seed).train.tolist())


def test_resume_continues_bit_for_bit(data, tmp_path, monkeypatch):
    net = tiny_net()
    options = dict(num_features=12, k=2, epochs=2, chunk_positions=300, verbose=False)
    whole = fd.train_sae(net, "2", data, **options)
    calls = {"n": 0}
    original = SAETrainer.fit_chunk

    def interrupted(self, rows):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, rows)

    monkeypatch.setattr(SAETrainer, "fit_chunk", interrupted)
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fd.train_sae(net, "2", data, checkpoint=path, **options)
    monkeypatch.setattr(SAETrainer, "fit_chunk", original)
    resumed = fd.train_sae(net, "2", data, checkpoint=path, **options)
    for (name, t), u in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(t, u), name
    with pytest.raises(ValueError, match="other settings.*k"):
        fd.train_sae(net, "2", data, checkpoint=path, **{**options, "k": 3})


@pytest.mark.parametrize("bad, match", [
    (dict(layer=["2"]), "layer must be one layer name"),
    (dict(layer="9"), "no layer '9'"),
    (dict(num_features=0), "num_features"),
    (dict(k=13), "k must be"),
    (dict(lr=0.0), "lr"),
    (dict(holdout=1.0), "holdout"),
    (dict(epochs=0), "epochs"),
])
def test_train_sae_names_bad_arguments(data, bad, match):
    args = dict(layer="2", num_features=12, k=2, verbose=False)
    args.update(bad)
    with pytest.raises((ValueError, TypeError, LookupError), match=match):
        fd.train_sae(tiny_net(), args.pop("layer"), data, args.pop("num_features"), args.pop("k"), **args)
