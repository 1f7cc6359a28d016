"""A compact GPT-2 forward pass that exposes every post-GELU MLP activation.

Weights are stored the way `torch.nn.functional.linear` wants them ([out, in]); Hugging Face's Conv1D
keeps [in, out], so the loader transposes once (see `checkpoint.py`). The GELU is not baked in: each
forward call names a variant from `gelu.VARIANTS`, so one set of weights serves both lineages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from nx_dagster.model.gelu import OWN_VARIANT, get_variant

# on_mlp(layer, post_gelu) is called with post_gelu shaped [batch, seq, n_inner].
MlpHook = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int
    n_head: int
    n_embd: int
    n_inner: int
    n_positions: int
    vocab_size: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"  # always post_fix's formula: config.read_config refuses others
    scale_attn_weights: bool = True  # scores divided by sqrt(head dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and by (layer index + 1)
    reorder_and_upcast_attn: bool = False  # attention computed in float32 whatever the model's dtype

    def attention_scale(self, layer: int) -> float | None:
        """The factor on q·k in block `layer` (0-based), as transformers' GPT2Attention computes it;
        None for GPT-2's usual 1/sqrt(head dim), which scaled_dot_product_attention applies itself."""
        if self.scale_attn_weights and not self.scale_attn_by_inverse_layer_idx:
            return None
        scale = (self.n_embd // self.n_head) ** -0.5 if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    @property
    def n_neurons(self) -> int:
        """MLP neurons per layer."""
        return self.n_inner


@dataclass
class Block:
    ln_1_w: torch.Tensor
    ln_1_b: torch.Tensor
    attn_w: torch.Tensor  # [3d, d]
    attn_b: torch.Tensor  # [3d]
    attn_proj_w: torch.Tensor  # [d, d]
    attn_proj_b: torch.Tensor
    ln_2_w: torch.Tensor
    ln_2_b: torch.Tensor
    fc_w: torch.Tensor  # [n_inner, d]  (W_in transposed)
    fc_b: torch.Tensor  # [n_inner]
    proj_w: torch.Tensor  # [d, n_inner] (W_out transposed)
    proj_b: torch.Tensor  # [d]


class GPT2:
    """Holds the weights and runs the forward pass; no autograd, no nn.Module state."""

    def __init__(self, config: GPT2Config, wte, wpe, blocks: list[Block], ln_f_w, ln_f_b):
        self.config, self.wte, self.wpe, self.blocks = config, wte, wpe, blocks
        self.ln_f_w, self.ln_f_b = ln_f_w, ln_f_b

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    def to(self, device=None, dtype=None) -> "GPT2":
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        blocks = [Block(**{k: mv(v) for k, v in vars(b).items()}) for b in self.blocks]
        return GPT2(self.config, mv(self.wte), mv(self.wpe), blocks, mv(self.ln_f_w), mv(self.ln_f_b))

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        gelu_variant: str = OWN_VARIANT,
        on_mlp: MlpHook | None = None,
        layers: int | None = None,
        logits: bool = True,
        neuron_major: bool = False,
    ) -> torch.Tensor:
        """input_ids [batch, seq] -> logits [batch, seq, vocab] (or the residual stream if not logits).

        Each sequence is its own context: positions start at 0. `layers` stops after that many blocks
        (recording needs no LM head); `on_mlp` sees each layer's post-GELU activations [b, t, n_inner].
        With `neuron_major` those activations are computed as one [n_inner, b·t] matrix (the same
        GEMM, transposed output), so the view `on_mlp` gets is contiguous per (neuron, sequence):
        what the recorder reads.
        """
        gelu = get_variant(gelu_variant).fn
        cfg = self.config
        b, t = input_ids.shape
        if t > cfg.n_positions:
            raise ValueError(f"sequence length {t} exceeds the model's n_positions {cfg.n_positions}")
        d, nh = cfg.n_embd, cfg.n_head
        x = self.wte[input_ids] + self.wpe[:t]  # [b, t, d]
        eps = cfg.layer_norm_epsilon
        n_run = cfg.n_layer if layers is None else layers
        for i, blk in enumerate(self.blocks[:n_run]):
            h = F.layer_norm(x, (d,), blk.ln_1_w, blk.ln_1_b, eps)
            qkv = F.linear(h, blk.attn_w, blk.attn_b)  # [b, t, 3d]
            q, k, v = qkv.view(b, t, 3, nh, d // nh).permute(2, 0, 3, 1, 4)  # each [b, nh, t, hd]
            if cfg.reorder_and_upcast_attn and q.dtype != torch.float32:
                a = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                   scale=cfg.attention_scale(i)).to(q.dtype)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=cfg.attention_scale(i))
            a = a.transpose(1, 2).reshape(b, t, d)
            x = x + F.linear(a, blk.attn_proj_w, blk.attn_proj_b)
            h = F.layer_norm(x, (d,), blk.ln_2_w, blk.ln_2_b, eps)
            if neuron_major:
                pre = torch.addmm(blk.fc_b[:, None], blk.fc_w, h.reshape(b * t, d).T)  # [n_inner, b·t]
                post = gelu(pre).view(-1, b, t).permute(1, 2, 0)  # [b, t, n_inner] view
            else:
                post = gelu(F.linear(h, blk.fc_w, blk.fc_b))  # [b, t, n_inner]
            if on_mlp is not None:
                on_mlp(i, post)
            x = x + F.linear(post, blk.proj_w, blk.proj_b)
        if not logits:
            return x
        x = F.layer_norm(x, (d,), self.ln_f_w, self.ln_f_b, eps)
        return F.linear(x, self.wte)  # tied LM head

    __call__ = forward
