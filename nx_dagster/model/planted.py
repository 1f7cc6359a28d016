"""A checkpoint whose layer-0 MLP has planted neurons: each fires on exactly one known token.

The known answer for checking a method set-up (explainer, simulator, judges): a method that works must
name each planted neuron's token and score it near 1, and must not score the random neurons beside them
as well. The checkpoint is built in Hugging Face layout (`config.json`, `model.safetensors`,
`tokenizer.json`) with the bundled tokenizer, so token strings and the corpus are real; the weights are
made here:
- token embeddings are random (Gaussian), position embeddings zero;
- layer 0's attention writes nothing (zero output projection) and its second layer norm has unit gain
  and zero bias, so the MLP input at a position is the normalized embedding `u[t]` of that token alone,
  whatever its context (‖u[t]‖² = d);
- planted neuron `n` for token `X` has pre-activation `GAIN · (u[X]·u[t]/d) − OFFSET`: GAIN − OFFSET on
  `X`, and below `−FLOOR` on every other token of the vocabulary (checked when built: a seed that gives
  another token within reach raises, naming the seed);
- the other neurons ("random") have Gaussian input weights: each is some fixed mixture of tokens.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nx_dagster.errors import NxInputError
from nx_dagster.model.checkpoint import BUNDLED_DIR

# Planted by default: frequent tokens of the bundled corpus, with case and leading-space variants of one
# word side by side (" The", " the", "The"): a method must read the explanation exactly to tell them apart.
DEFAULT_TOKENS = (" The", " the", "The", " import", " def", " return", "(", " self", " is", " of", " data",
                  " None")
GAIN, OFFSET, FLOOR = 10.0, 5.0, 1.0  # planted pre-activation: +5 on its token, below -1 elsewhere


@dataclass(frozen=True)
class Planted:
    folder: Path
    tokens: dict[int, str]  # planted neuron -> the token it fires on
    n_neurons: int  # planted and random neurons of layer 0


def build_planted_checkpoint(folder: Path, tokens: tuple[str, ...] = DEFAULT_TOKENS, n_random: int = 20,
                             n_embd: int = 128, seed: int = 0) -> Planted:
    """Write the checkpoint into `folder` (created; files replaced). Neurons 0..len(tokens)-1 are planted
    in the order of `tokens`; the next `n_random` are random."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(BUNDLED_DIR / "tokenizer.json"))
    ids = []
    for text in tokens:
        enc = tokenizer.encode(text).ids
        if len(enc) != 1:
            raise NxInputError(f"planted token {text!r}", f"is {len(enc)} tokens of the bundled tokenizer",
                               "plant strings that the tokenizer encodes as one token")
        ids.append(enc[0])
    vocab = tokenizer.get_vocab_size()
    d, n_planted = n_embd, len(ids)
    n_inner = n_planted + n_random
    g = torch.Generator().manual_seed(seed)
    wte = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    u = torch.nn.functional.layer_norm(wte, (d,), eps=1e-5)  # what layer 0's MLP sees at each token
    fc_w = torch.randn(n_inner, d, generator=g, dtype=torch.float64) / d ** 0.5  # [n_inner, d]
    fc_b = torch.zeros(n_inner, dtype=torch.float64)
    planted = u[ids] * (GAIN / d)
    fc_w[:n_planted], fc_b[:n_planted] = planted, -OFFSET
    pre = u @ planted.T - OFFSET  # [vocab, n_planted]
    for n, token_id in enumerate(ids):
        others = torch.cat([pre[:token_id, n], pre[token_id + 1:, n]])
        if pre[token_id, n] < GAIN - OFFSET - 1e-3 or others.max() > -FLOOR:
            raise NxInputError(f"planted checkpoint seed {seed}", f"lets another token reach neuron {n}",
                               "choose another seed")
    tensors = {
        "wte.weight": wte, "wpe.weight": torch.zeros(64, d, dtype=torch.float64),
        "h.0.ln_1.weight": torch.ones(d), "h.0.ln_1.bias": torch.zeros(d),
        "h.0.attn.c_attn.weight": torch.zeros(d, 3 * d), "h.0.attn.c_attn.bias": torch.zeros(3 * d),
        "h.0.attn.c_proj.weight": torch.zeros(d, d), "h.0.attn.c_proj.bias": torch.zeros(d),
        "h.0.ln_2.weight": torch.ones(d), "h.0.ln_2.bias": torch.zeros(d),
        "h.0.mlp.c_fc.weight": fc_w.T, "h.0.mlp.c_fc.bias": fc_b,  # Conv1D layout: [in, out]
        "h.0.mlp.c_proj.weight": torch.randn(n_inner, d, generator=g, dtype=torch.float64) / n_inner ** 0.5,
        "h.0.mlp.c_proj.bias": torch.zeros(d),
        "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d),
    }
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
              "vocab_size": vocab, "n_positions": 64, "n_ctx": 64, "n_embd": d, "n_layer": 1, "n_head": 4,
              "n_inner": n_inner, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(BUNDLED_DIR / "tokenizer.json", folder / "tokenizer.json")
    return Planted(folder, {n: text for n, text in enumerate(tokens)}, n_inner)
