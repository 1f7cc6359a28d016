"""Outside baselines for `bench_recording.py`: transformers' GPT2Model on the same weights (the bare
forward pass), and a naive recorder built on it (a forward hook per layer keeping a top-k of
per-sequence maxima), like the peer scripts the recording is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nx_dagster.model.gpt2 import GPT2


def hf_twin(model: GPT2, ids: torch.Tensor):
    """transformers' GPT2Model with the same weights (Conv1D keeps [in, out]: transposed back), in the
    model's dtype. Checked to compute the same hidden states on `ids` in float32 (bf16 rounding
    compounds through the layers: 0.1-0.16 apart on GPT-2 small, no test of equality there)."""
    from transformers import GPT2Config as HFConfig, GPT2Model

    c = model.config
    hf = GPT2Model(HFConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_inner=c.n_inner,
                            n_positions=c.n_positions, vocab_size=c.vocab_size, activation_function="gelu_new",
                            layer_norm_epsilon=c.layer_norm_epsilon, bos_token_id=0, eos_token_id=0))
    sd = {"wte.weight": model.wte, "wpe.weight": model.wpe, "ln_f.weight": model.ln_f_w, "ln_f.bias": model.ln_f_b}
    for i, b in enumerate(model.blocks):
        p = f"h.{i}."
        sd.update({p + "ln_1.weight": b.ln_1_w, p + "ln_1.bias": b.ln_1_b, p + "ln_2.weight": b.ln_2_w,
                   p + "ln_2.bias": b.ln_2_b, p + "attn.c_attn.weight": b.attn_w.T, p + "attn.c_attn.bias": b.attn_b,
                   p + "attn.c_proj.weight": b.attn_proj_w.T, p + "attn.c_proj.bias": b.attn_proj_b,
                   p + "mlp.c_fc.weight": b.fc_w.T, p + "mlp.c_fc.bias": b.fc_b,
                   p + "mlp.c_proj.weight": b.proj_w.T, p + "mlp.c_proj.bias": b.proj_b})
    missing, unexpected = hf.load_state_dict({k: v.float().cpu() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    hf = hf.eval().to(model.device, torch.float32)
    ours32 = model.to(model.device, torch.float32)  # the same (possibly bf16-rounded) weights, in float32
    with torch.inference_mode():
        theirs = hf(input_ids=ids[:8]).last_hidden_state
        ours = F.layer_norm(ours32(ids[:8], "post_fix", logits=False), (c.n_embd,), model.ln_f_w.float(),
                            model.ln_f_b.float(), c.layer_norm_epsilon)
    err = (theirs - ours).abs().max().item()
    assert err < 1e-3, f"transformers twin differs from the model by {err} (float32)"
    del ours32
    return hf.to(model.dtype)


class NaivePeer:
    """transformers + a forward hook on every MLP activation keeping, per neuron, the top-k per-sequence
    maxima and their sequence ids (a running torch.topk over k + batch candidates per layer)."""

    def __init__(self, hf, k: int = 20):
        self.hf, self.k = hf, k
        self.top: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ids: torch.Tensor | None = None

    def _keep(self, layer: int, post: torch.Tensor) -> None:
        seq_max = post.amax(dim=1).float()  # [B, N]
        ids = self._ids[:, None].expand_as(seq_max)
        if layer in self.top:
            vals, sids = self.top[layer]
            seq_max, ids = torch.cat([vals, seq_max]), torch.cat([sids, ids])
        vals, idx = seq_max.topk(min(self.k, len(seq_max)), dim=0)
        self.top[layer] = (vals, ids.gather(0, idx))

    def step(self, seq_ids: torch.Tensor, ids: torch.Tensor) -> None:
        self._ids = seq_ids
        hooks = [block.mlp.act.register_forward_hook(lambda mod, inp, out, i=i: self._keep(i, out))
                 for i, block in enumerate(self.hf.h)]  # only while this peer runs: the twin is timed bare too
        try:
            with torch.inference_mode():
                self.hf(input_ids=ids)
        finally:
            for h in hooks:
                h.remove()

    def finish(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        out = {layer: (v.cpu(), s.cpu()) for layer, (v, s) in self.top.items()}
        self.top = {}
        return out
