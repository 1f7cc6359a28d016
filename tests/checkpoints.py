"""Small GPT-2 checkpoints in Hugging Face layout, built inside the tests (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def word_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on a few sentences, padded to `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the cat sat on the mat", "Paris is the capital of France", "one two three four five six"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(text, trainer)
    return tok


def build_checkpoint(
    folder: Path, n_layer: int = 3, n_embd: int = 32, n_head: int = 4, vocab_size: int = 300,
    n_positions: int = 64, seed: int = 0, activation_function: str = "gelu_new", tokenizer_vocab: int | None = None,
    prefix: bool = True, **config,
) -> Path:
    """Random GPT-2 weights (non-trivial layer-norm gains and biases) saved with save_pretrained;
    `config` adds transformers GPT2Config fields (n_inner, layer_norm_epsilon, scale_attn_weights...)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size, n_positions=n_positions,
        activation_function=activation_function, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if not prefix:  # the original openai-community/gpt2 files have no "transformer." prefix
        from safetensors.torch import load_file, save_file

        sd = load_file(str(folder / "model.safetensors"))
        save_file({k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"},
                  str(folder / "model.safetensors"))
    word_tokenizer(tokenizer_vocab or vocab_size).save(str(folder / "tokenizer.json"))
    return folder


def set_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


CORPUS_LINE = "Paris is the capital of France. The cat sat on the mat. "


def tiny_run_inputs(folder: Path, repeats: int = 120, n_layer: int = 2) -> tuple[Path, Path]:
    """The inputs most run tests use: a checkpoint (`n_layer` layers, width 32, 4 heads) under
    `folder/ckpt` and a one-sentence-pair corpus repeated `repeats` times at `folder/corpus.txt`."""
    ckpt = build_checkpoint(folder / "ckpt", n_layer=n_layer, n_embd=32, n_head=4)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS_LINE * repeats)
    return ckpt, corpus
