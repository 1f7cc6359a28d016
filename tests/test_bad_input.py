"""Bad input stops before any table changes, with a message naming the input and the fix."""

import json

import pytest

from nxd.cli import main
from nx_dagster.errors import NxInputError
from nx_dagster.model import get_variant, open_checkpoint
from nx_dagster.storage import Catalog
from tests.checkpoints import build_checkpoint, set_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "good", n_layer=2, n_embd=32)


def copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def run_cli(tmp_path, capsys, *args):
    home = tmp_path / "home"
    code = main(["run", "--home", str(home), *args])
    err = capsys.readouterr().err
    return code, err, home


def assert_untouched(home):
    if (home / "catalog.sqlite").exists():
        cat = Catalog(home)
        for t in ("models", "sequences", "activation_records"):
            assert cat.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() == 0


@pytest.mark.parametrize("case", ["missing", "no_weights", "corrupt", "not_gpt2", "vocab", "shape"])
def test_bad_checkpoint(case, ckpt, tmp_path, capsys):
    folder = tmp_path / "ck"
    if case == "missing":
        folder = tmp_path / "does-not-exist"
    else:
        copy(ckpt, folder)
    if case == "no_weights":
        (folder / "model.safetensors").unlink()
    elif case == "corrupt":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "not_gpt2":
        set_config(folder, model_type="llama")
    elif case == "vocab":
        build_checkpoint(tmp_path / "other", n_layer=2, n_embd=32, vocab_size=300, tokenizer_vocab=400)
        (folder / "tokenizer.json").write_bytes((tmp_path / "other" / "tokenizer.json").read_bytes())
    elif case == "shape":
        set_config(folder, n_embd=64)
    code, err, home = run_cli(tmp_path, capsys, "--model", str(folder), "--corpus", str(corpus(tmp_path)))
    assert code == 2, err
    assert "Fix:" in err and ("model" in err or "weights" in err or "tokenizer" in err)
    expected = {"missing": "is not a folder", "no_weights": "model.safetensors", "corrupt": "cannot be read",
                "not_gpt2": "llama", "vocab": "vocab_size", "shape": "shape"}[case]
    assert expected in err
    assert_untouched(home)


def corpus(tmp_path, text="the cat sat on the mat. " * 200):
    p = tmp_path / "corpus.txt"
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", ["empty", "short", "missing", "bad_jsonl"])
def test_bad_corpus(case, ckpt, tmp_path, capsys):
    if case == "empty":
        path = corpus(tmp_path, "")
    elif case == "short":
        path = corpus(tmp_path, "just a few words")
    elif case == "missing":
        path = tmp_path / "nope.txt"
    else:
        path = tmp_path / "c.jsonl"
        path.write_text(json.dumps({"body": "x"}) + "\n")
    code, err, home = run_cli(tmp_path, capsys, "--model", str(ckpt), "--corpus", str(path))
    assert code == 2 and "Fix:" in err and "corpus" in err, err
    assert_untouched(home)


def test_unknown_variant_and_layers(ckpt, tmp_path, capsys):
    code, err, _ = run_cli(tmp_path, capsys, "--model", str(ckpt), "--variants", "exact_gelu")
    assert code == 2 and "exact_gelu" in err and "pre_fix, post_fix" in err
    code, err, _ = run_cli(tmp_path, capsys, "--model", str(ckpt), "--layers", "5")
    assert code == 2 and "layers" in err and "Fix:" in err
    with pytest.raises(NxInputError, match="GELU variant"):
        get_variant("gelu")


def test_unwritable_home(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["run", "--home", str(blocker / "sub"), "--model", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and "NX_HOME" in err and "Fix:" in err


def test_hub_id_without_network_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(NxInputError, match="Hugging Face Hub|huggingface_hub"):
        open_checkpoint("openai-community/gpt2")
