"""A checkpoint whose layer-0 MLP has planted neurons: each fires on exactly one known token.

The known answer for checking a method set-up (explainer, simulator, judges): a method that works must
name each planted neuron's token and score it near 1, and must not score the random neurons beside them
as well. The checkpoint is built in Hugging Face layout (`config.json`, `model.safetensors`,
`tokenizer.json`) with the bundled tokenizer, so token strings and the corpus are real; the weights are
made here:
- the residual stream has a token half and a position half: random token embeddings (Gaussian, centred,
  all of one norm) fill the first half of each vector, random position embeddings the second;
- layer 0's attention writes nothing (zero output projection) and its second layer norm has unit gain and
  zero bias, so the MLP input at a position is the normalized sum of that token's and that position's
  embeddings, whatever the context;
- planted neuron `n` for token `X` reads the token half along `X`'s embedding: its pre-activation is
  at least +2 on `X` at every position and below `-FLOOR` on every other token at every position (checked
  for every token and position when built: a seed that lets another token within reach raises);
- the other neurons ("random") read only the position half with Gaussian weights: they fire by position,
  whatever the token, so no explanation of tokens should beat its null on them.
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
# a planted pre-activation is SCALE·(match − THRESHOLD): at least 2 on its token, at most −FLOOR elsewhere
THRESHOLD, SCALE, FLOOR = 0.65, 20.0, 1.0


@dataclass(frozen=True)
class Planted:
    folder: Path
    tokens: dict[int, str]  # planted neuron -> the token it fires on
    n_neurons: int  # planted and random neurons of layer 0


def _centred_unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of mean 0 and norm √(columns): the layer norm of a token plus a position is then their plain sum
    over a constant, so what a neuron reads from one half never depends on the other."""
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True) * x.shape[1] ** 0.5


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
    d, half, n_planted, n_positions = n_embd, n_embd // 2, len(ids), 64
    n_inner = n_planted + n_random
    g = torch.Generator().manual_seed(seed)
    wte = torch.zeros(vocab, d, dtype=torch.float64)
    wte[:, :half] = _centred_unit_rows(torch.randn(vocab, half, generator=g, dtype=torch.float64))
    wpe = torch.zeros(n_positions, d, dtype=torch.float64)
    wpe[:, half:] = _centred_unit_rows(torch.randn(n_positions, half, generator=g, dtype=torch.float64))
    fc_w = torch.zeros(n_inner, d, dtype=torch.float64)  # [n_inner, d]
    fc_b = torch.zeros(n_inner, dtype=torch.float64)
    # planted: SCALE · (w·ln(x) − THRESHOLD) with w = X's token half / its squared norm, so w·ln(x) ≈ 1 on X
    own = wte[ids, :half]
    fc_w[:n_planted, :half] = own / (own * own).sum(1, keepdim=True)
    fc_w[:n_planted] *= SCALE
    fc_b[:n_planted] = -SCALE * THRESHOLD
    fc_w[n_planted:, half:] = torch.randn(n_random, d - half, generator=g, dtype=torch.float64) / (d - half) ** 0.5 * 4
    # every (token, position) pair, as layer 0's MLP sees it
    x = torch.nn.functional.layer_norm(wte[:, None, :] + wpe[None, :, :], (d,), eps=1e-5)  # [vocab, pos, d]
    pre = torch.einsum("vpd,nd->nvp", x, fc_w[:n_planted]) + fc_b[:n_planted, None, None]  # [planted, vocab, pos]
    for n, token_id in enumerate(ids):
        others = torch.cat([pre[n, :token_id], pre[n, token_id + 1:]])
        if pre[n, token_id].min() < 2 or others.max() > -FLOOR:
            raise NxInputError(f"planted checkpoint seed {seed}", f"lets another token reach neuron {n}",
                               "choose another seed")
    tensors = {
        "wte.weight": wte, "wpe.weight": wpe,
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
              "vocab_size": vocab, "n_positions": n_positions, "n_ctx": n_positions, "n_embd": d, "n_layer": 1,
              "n_head": 4, "n_inner": n_inner, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(BUNDLED_DIR / "tokenizer.json", folder / "tokenizer.json")
    return Planted(folder, {n: text for n, text in enumerate(tokens)}, n_inner)
