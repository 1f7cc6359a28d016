"""Read a Hugging Face GPT-2 `config.json` so that no field that changes the forward pass is ignored.

Every field of transformers' `GPT2Config` (and of the generic `PreTrainedConfig` it extends) is in
exactly one of these lists (which field does what: transformers `models/gpt2/configuration_gpt2.py`
and `modeling_gpt2.py`, v4.40 to v5):

- `HONOURED`: read into `gpt2.GPT2Config` and applied by `gpt2.GPT2.forward`; tests/test_parity.py
  holds each non-default value to transformers' own forward pass.
- `REFUSED` unless at its default: the forward pass (or the token connections read from the
  unembedding) would differ in a way this project does not implement. A named `NxInputError` stops the
  run before anything is written.
- `INERT`: no effect on a forward pass at inference (dropouts, initialisation, heads we never run,
  generation settings, bookkeeping).

`activation_function` is honoured through the GELU registry (`gelu.check_model_activation`): only the
tanh GELU GPT-2 was trained with is accepted. A field in none of the lists is not read by transformers'
GPT-2 either; it is logged as a warning, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from nx_dagster.errors import NxInputError
from nx_dagster.model.gelu import check_model_activation
from nx_dagster.model.gpt2 import GPT2Config

log = logging.getLogger(__name__)

# transformers' attribute_map: a config.json may use either name.
ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
           "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
SHAPE = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")  # required positive integers
HONOURED = SHAPE + ("n_inner", "layer_norm_epsilon", "activation_function", "scale_attn_weights",
                    "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "n_ctx")
FLAGS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}

# field -> (the accepted values, why any other value is refused)
REFUSED: dict[str, tuple[tuple, str]] = {
    "add_cross_attention": ((False,), "its blocks attend to an encoder's states, which a corpus run does not have"),
    "is_encoder_decoder": ((False,), "it is the decoder of an encoder-decoder model, which needs the encoder's states"),
    "tie_word_embeddings": ((True,), "its LM head is a separate matrix, but the logits and the token output "
                            "connections here use the tied embedding wte"),
    "pruned_heads": (({}, None), "pruned attention heads change the attention shapes"),
    "quantization_config": ((None,), "quantized weights are not read"),
}

INERT = frozenset({
    # dropout and initialisation: training only
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "initializer_range",
    # the multiple-choice head of GPT2DoubleHeadsModel, never run here
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    # special token ids and generation settings: no effect on one forward pass
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
    # bookkeeping, output formats, heads and kernels that compute the same function
    "model_type", "architectures", "transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
    "id2label", "label2id", "num_labels", "_num_labels", "problem_type", "finetuning_task", "tokenizer_class",
    "prefix", "output_hidden_states", "output_attentions", "return_dict", "torchscript", "use_bfloat16",
    "tf_legacy_loss", "gradient_checkpointing", "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
    "chunk_size_feed_forward", "attn_implementation", "_attn_implementation", "_attn_implementation_autoset",
})


def read_config(folder: Path, label: str) -> GPT2Config:
    """`folder/config.json` -> GPT2Config, or NxInputError naming the field, its value and the fix."""
    path = folder / "config.json"
    if not path.exists():
        raise NxInputError(f"model {label}", f"has no config.json in {folder}", "use a Hugging Face GPT-2 checkpoint folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NxInputError(f"model config {path}", f"is not valid JSON ({e})", "restore config.json") from e
    if not isinstance(raw, dict):
        raise NxInputError(f"model config {path}", "is not a JSON object", "restore config.json")
    if raw.get("model_type") != "gpt2":
        raise NxInputError(
            f"model {label}", f"has model_type {raw.get('model_type')!r}, not 'gpt2'",
            "nx_dagster reads GPT-2-architecture checkpoints only (gpt2, gpt2-medium/large/xl or the same shape)",
        )
    where = f"model config {path}"
    raw = _canonical(raw, where)
    for key, (accepted, why) in REFUSED.items():
        if key in raw and raw[key] not in accepted:
            raise NxInputError(where, f"sets {key}={raw[key]!r}: {why}",
                               f"use a checkpoint with {key}={accepted[0]!r} (or without the field)")
    check_model_activation(raw.get("activation_function", "gelu_new"), where)
    unknown = sorted(set(raw) - set(HONOURED) - set(REFUSED) - INERT)
    if unknown:
        log.warning("%s: fields %s are not GPT-2 config fields; transformers' GPT-2 ignores them and so does "
                    "nx_dagster", path, ", ".join(unknown))

    shape = {key: _positive_int(raw, key, where) for key in SHAPE}
    if shape["n_embd"] % shape["n_head"]:
        raise NxInputError(where, f"sets n_embd={shape['n_embd']}, not a multiple of n_head={shape['n_head']}",
                           "use the config.json saved with these weights")
    if raw.get("n_ctx") is not None and raw["n_ctx"] != shape["n_positions"]:
        raise NxInputError(where, f"sets n_ctx={raw['n_ctx']!r} but n_positions={shape['n_positions']}: "
                           "the context length is ambiguous", "set n_ctx equal to n_positions, or remove n_ctx")
    n_inner = _positive_int(raw, "n_inner", where) if raw.get("n_inner") is not None else 4 * shape["n_embd"]
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise NxInputError(where, f"sets layer_norm_epsilon={eps!r}", "use a positive number (GPT-2: 1e-05)")
    flags = {}
    for key, default in FLAGS.items():
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            raise NxInputError(where, f"sets {key}={flags[key]!r}, not true or false", f"use {json.dumps(default)}")
    return GPT2Config(**shape, n_inner=n_inner, layer_norm_epsilon=float(eps),
                      activation_function=raw.get("activation_function", "gelu_new"), **flags)


def _canonical(raw: dict, where: str) -> dict:
    """Rename transformers' alias fields (hidden_size...) to GPT-2's own names."""
    out = dict(raw)
    for alias, name in ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            if name in out and out[name] != value:
                raise NxInputError(where, f"sets {alias}={value!r} and {name}={out[name]!r}",
                                   f"keep one of them ({name} is GPT-2's name)")
            out[name] = value
    return out


def _positive_int(raw: dict, key: str, where: str) -> int:
    if key not in raw:
        raise NxInputError(where, f"lacks {key}", "use a complete GPT-2 config.json")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NxInputError(where, f"sets {key}={value!r}, not a positive integer",
                           "use the config.json saved with these weights")
    return value
