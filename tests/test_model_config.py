"""Every config.json field that changes the forward pass is honoured (tests/test_parity.py) or refused
here with a named error before any table changes; the model's own activation must be post_fix's."""

import json
import logging

import pytest

from nx_dagster.model import open_checkpoint
from nx_dagster.model.config import FLAGS, HONOURED, INERT, REFUSED
from nx_dagster.model.gelu import MODEL_ACTIVATIONS
from tests.checkpoints import build_checkpoint, set_config
from tests.test_bad_input import assert_untouched, copy, corpus, run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "good", n_layer=2, n_embd=32)


def refused(tmp_path, capsys, ckpt, **changes):
    folder = copy(ckpt, tmp_path / "ck")
    set_config(folder, **changes)
    code, err, home = run_cli(tmp_path, capsys, "--model", str(folder), "--corpus", str(corpus(tmp_path)))
    assert code == 2, err
    assert "config.json" in err and "Fix:" in err and "Traceback" not in err, err
    assert_untouched(home)
    return err


@pytest.mark.parametrize("activation", ["relu", "gelu", "quick_gelu", "silu", "gelu_10", "tanh", "no_such_fn"])
def test_other_activation_functions_are_refused(activation, ckpt, tmp_path, capsys):
    err = refused(tmp_path, capsys, ckpt, activation_function=activation)
    assert f"activation_function={activation!r}" in err
    assert all(name in err for name in MODEL_ACTIVATIONS)  # says what is supported


@pytest.mark.parametrize("field,value", [
    ("add_cross_attention", True), ("is_encoder_decoder", True), ("tie_word_embeddings", False),
    ("pruned_heads", {"0": [1]}), ("quantization_config", {"quant_method": "bitsandbytes"}),
    ("n_ctx", 32), ("n_head", 5), ("n_inner", 0), ("layer_norm_epsilon", "small"), ("layer_norm_epsilon", 0),
    ("scale_attn_weights", "no"), ("reorder_and_upcast_attn", 1), ("n_layer", 2.5),
])
def test_unsupported_config_values_are_refused(field, value, ckpt, tmp_path, capsys):
    err = refused(tmp_path, capsys, ckpt, **{field: value})
    assert f"{field}={value!r}" in err


def test_alias_fields_are_read_and_must_agree(ckpt, tmp_path):
    folder = copy(ckpt, tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = cfg.pop("n_embd")
    (folder / "config.json").write_text(json.dumps(cfg))
    assert open_checkpoint(str(folder)).config.n_embd == 32
    set_config(folder, n_embd=64)
    with pytest.raises(ValueError, match="hidden_size=32 and n_embd=64"):
        open_checkpoint(str(folder))


def test_inert_and_unknown_fields(ckpt, tmp_path, caplog):
    folder = copy(ckpt, tmp_path / "ck")
    set_config(folder, resid_pdrop=0.5, summary_type="last", n_ctx=64, some_extension=True)
    with caplog.at_level(logging.WARNING, logger="nx_dagster.model.config"):
        cfg = open_checkpoint(str(folder)).config
    assert cfg.n_positions == 64 and "some_extension" in caplog.text and "resid_pdrop" not in caplog.text


def test_every_transformers_field_is_classified():
    """No field of the installed transformers' GPT2Config is left unclassified."""
    transformers = pytest.importorskip("transformers")
    fields = set(transformers.GPT2Config().to_dict())
    assert not fields - set(HONOURED) - set(REFUSED) - INERT
    assert set(FLAGS) <= set(HONOURED)
