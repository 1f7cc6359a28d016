"""Post-GELU MLP activations match Hugging Face transformers on the same checkpoint, per layer."""

import pytest
import torch

from nx_dagster.model import open_checkpoint
from tests.checkpoints import build_checkpoint

transformers = pytest.importorskip("transformers")


def hf_post_gelu(folder, hf_activation: str, ids: torch.Tensor) -> list[torch.Tensor]:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, activation_function=hf_activation).eval()
    got: list[torch.Tensor] = []
    hooks = [blk.mlp.act.register_forward_hook(lambda m, i, o: got.append(o.detach())) for blk in model.transformer.h]
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return got + [logits]


@pytest.mark.parametrize("variant,hf_name", [("pre_fix", "quick_gelu"), ("post_fix", "gelu_new")])
@pytest.mark.parametrize("prefix", [True, False])
def test_matches_transformers_per_layer(tmp_path, variant, hf_name, prefix):
    folder = build_checkpoint(tmp_path / "ckpt", n_layer=4, n_embd=48, n_head=6, vocab_size=311, prefix=prefix)
    ids = torch.randint(0, 311, (3, 40), generator=torch.Generator().manual_seed(1))
    ref = hf_post_gelu(folder, hf_name, ids)
    model = open_checkpoint(str(folder)).load_model()
    ours: list[torch.Tensor] = []
    logits = model(ids, gelu_variant=variant, on_mlp=lambda layer, a: ours.append(a.clone()))
    assert len(ours) == 4
    for layer, (a, b) in enumerate(zip(ours, ref[:-1])):
        diff = (a - b).abs().max().item()
        assert diff <= 1e-4, f"layer {layer}: max |ours - transformers| = {diff:.2e}"
    assert (logits - ref[-1]).abs().max().item() <= 1e-3


def test_variants_differ(tmp_path):
    folder = build_checkpoint(tmp_path / "ckpt")
    model = open_checkpoint(str(folder)).load_model()
    ids = torch.randint(0, 300, (2, 16))
    a, b = [], []
    model(ids, "pre_fix", on_mlp=lambda i, x: a.append(x.clone()))
    model(ids, "post_fix", on_mlp=lambda i, x: b.append(x.clone()))
    assert (a[0] - b[0]).abs().max() > 1e-3


def test_reduced_precision_close(tmp_path):
    folder = build_checkpoint(tmp_path / "ckpt")
    ck = open_checkpoint(str(folder))
    ids = torch.randint(0, 300, (2, 16))
    full, half = [], []
    ck.load_model()(ids, "post_fix", on_mlp=lambda i, x: full.append(x.clone()))
    reduced = ck.load_model(dtype=torch.bfloat16)
    assert reduced.dtype == torch.bfloat16
    reduced(ids, "post_fix", on_mlp=lambda i, x: half.append(x.float()))
    assert len(half) == len(full)
    for a, b in zip(full, half):
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= 0.1 * scale + 0.05
