"""`fastdissect sae train` / `sae compare`: the command gives what fd.train_sae and fd.compare_bases
give for the same inputs (weights bit for bit, every number of the table), and bad flags are refused
in one line that names the flag."""

import csv

import pytest
import torch

import fastdissect as fd
from fastdissect.cli import main as cli
from fastdissect.pipeline.models import load_model

MODELS = '''
import torch

def net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())
'''
TRAIN = dict(epochs=2, positions_per_step=512, lr=1e-3, seed=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_sae")
    (root / "toys.py").write_text(MODELS)
    data = fd.datasets.builtin(root / "concepts", n_images=16, image_size=48, label_size=24, seed=2)
    return root, f"{root / 'toys.py'}:net", str(data)


def train_args(spec, data, out, *extra):
    return ["sae", "train", "--model", spec, "--layer", "3", "--dataset", data, "--features", "32", "--k", "3",
            "--epochs", "2", "--positions-per-step", "512", "--lr", "1e-3", "--seed", "3", "--out", str(out),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(setup):
    root, spec, data = setup
    out = root / "sae.safetensors"
    assert cli.main(train_args(spec, data, out, "--checkpoint", str(root / "sae-ckpt.safetensors"))) == 0
    return out


def test_train_gives_the_python_apis_autoencoder_bit_for_bit(setup, trained, capsys):
    root, spec, data = setup
    cli_sae = fd.SparseAutoencoder.load(trained)
    api_sae = fd.train_sae(load_model(spec, seed=3), "3", fd.datasets.Broden(data), 32, 3, verbose=False, **TRAIN)
    for name, t in api_sae.state_dict().items():
        assert torch.equal(cli_sae.state_dict()[name], t), name
    assert cli_sae.metrics == pytest.approx(api_sae.metrics, abs=0, rel=0)
    assert cli_sae.settings["layer"] == "3" and cli_sae.k == 3 and cli_sae.num_features == 32
    # the checkpoint the run wrote is of the finished run: resuming from it trains nothing more, same weights
    again = root / "again.safetensors"
    assert cli.main(train_args(spec, data, again, "--checkpoint", str(root / "sae-ckpt.safetensors"))) == 0
    assert all(torch.equal(a, b) for a, b in zip(fd.SparseAutoencoder.load(again).state_dict().values(),
                                                  cli_sae.state_dict().values()))
    out = capsys.readouterr().out
    assert f"explained variance {api_sae.metrics['explained_variance']:.3f}" in out and f"saved to {again}" in out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_gives_compare_bases_table(setup, trained, tmp_path, capsys):
    root, spec, data = setup
    out = tmp_path / "cmp"
    assert cli.main(["sae", "compare", "--model", spec, "--layer", "3", "--dataset", data, "--sae", str(trained),
                     "--seed", "3", "--rotation-seed", "5", "--batch-size", "5", "--quantile", "0.01",
                     "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    sae = fd.SparseAutoencoder.load(trained)
    c = fd.compare_bases(load_model(spec, seed=3), "3", fd.datasets.Broden(data),
                         {"units": None, "rotation": fd.random_rotation(16, seed=5), "sae": sae}, batch_size=5,
                         quantile=0.01, verbose=False)
    want = c.table()
    got = read_csv(out / "bases.csv")
    assert [r["basis"] for r in got] == ["units", "rotation", "sae"]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for key, value in w.items():
            assert (g[key] == value) if isinstance(value, str) else float(g[key]) == pytest.approx(value, abs=1e-6), key
    assert {p.name for p in out.iterdir()} >= {"index.html", "bases.csv", "bases_shares.png", "bases_best_iou.png",
                                               "bases_unique.png"}
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("basis"))
    for line, w in zip(lines[header + 1:header + 4], want):  # the printed table is the same numbers
        cells = line.split()
        assert cells[0] == w["basis"] and int(cells[1]) == w["features"] and int(cells[2]) == w["interpretable"]
        assert f"{w['beyond_chance']} ({100 * w['beyond_chance_share']:.1f}%)" in line
        assert f"{w['median_best_iou']:.3f}" in line
    # a second run into the same directory is refused unless --overwrite
    again = ["sae", "compare", "--model", spec, "--seed", "3", "--layer", "3", "--dataset", data, "--sae",
             str(trained), "--out", str(out), "--quantile", "0.01", "--quiet"]
    assert cli.main(again) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli.main(again + ["--overwrite", "--dissection"]) == 0  # and every basis's dissection is kept
    kept = fd.load(out / "dissection")  # the features of each basis as units, the numbers of compare_bases
    assert list(kept) == ["3", "3@rotation", "3@sae"] and kept["3@sae"].num_units == 32
    assert torch.equal(kept["3"].scores.iou, c.result("units").scores.iou)
    assert torch.equal(kept["3@sae"].scores.iou, c.result("sae").scores.iou)
    assert (out / "dissection" / "report" / "layer_3_sae.html").is_file() and (out / "index.html").is_file()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastdissect: error: "), err
    return err[0]


def test_bad_train_flags_name_the_flag(setup, trained, tmp_path, capsys):
    root, spec, data = setup
    base = ["sae", "train", "--model", spec, "--layer", "3", "--dataset", data, "--quiet"]
    assert cli.main(base + ["--features", "4", "--k", "8", "--out", str(tmp_path / "a.safetensors")]) == 1
    assert "--k 8 must be at most --features 4" in one_line_error(capsys)
    assert cli.main(base + ["--features", "4", "--k", "2", "--out", str(trained)]) == 1
    assert f"--out {trained} exists: pass --overwrite" in one_line_error(capsys)
    assert cli.main(base + ["--features", "4", "--k", "2", "--out", str(tmp_path)]) == 1
    assert "is a directory" in one_line_error(capsys)
    assert cli.main(["sae", "train", "--model", spec, "--layer", "nope", "--dataset", data, "--features", "4",
                     "--k", "2", "--out", str(tmp_path / "b.safetensors"), "--quiet"]) == 1
    assert "nope" in one_line_error(capsys)
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    with pytest.raises(SystemExit):  # argparse: usage and the flag
        cli.main(base + ["--features", "0", "--k", "1", "--out", str(tmp_path / "c.safetensors")])
    assert "--features: must be >= 1, got 0" in capsys.readouterr().err


def test_compare_refuses_an_sae_of_another_layer_and_warns_of_other_weights(setup, trained, tmp_path, capsys):
    root, spec, data = setup
    args = ["sae", "compare", "--model", spec, "--dataset", data, "--sae", str(trained), "--quiet", "--seed", "3"]
    assert cli.main(args + ["--layer", "1", "--out", str(tmp_path / "a")]) == 1
    assert f"--sae {trained} was trained on layer '3', not --layer '1'" in one_line_error(capsys)
    with pytest.warns(RuntimeWarning, match="--sae .* was trained on other weights"):  # another --seed: other weights
        assert cli.main(args + ["--layer", "3", "--seed", "9", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(args + ["--layer", "3", "--sae", str(tmp_path / "none.safetensors"), "--out",
                            str(tmp_path / "c")]) == 1
    assert "no sparse autoencoder file" in one_line_error(capsys)


@pytest.mark.parametrize("action", ["train", "compare"])
def test_every_option_has_help(action, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["sae", action, "--help"])
    text = capsys.readouterr().out
    assert exit.value.code == 0 and text.startswith(f"usage: fastdissect sae {action}")
    options = [line.split() for line in text.splitlines() if line.strip().startswith("--")]
    assert len(options) > 10 and all(len(words) > 1 for words in options)  # a flag alone on a line: no help
