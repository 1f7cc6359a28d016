"""Train the bundled default model: a small GPT-2 on the bundled corpus, with its own BPE tokenizer.

    python -m tools.train_default            # writes nx_dagster/bundled/model/

A development tool, not part of the pipeline. It needs only the project's runtime dependencies (torch,
tokenizers, safetensors): the trainable GPT-2 below is written here, and its weights are saved in the
Hugging Face layout (`transformer.`-prefixed keys, Conv1D weights as [in, out], LM head tied to `wte`),
so both `transformers.GPT2LMHeadModel.from_pretrained` and `nx_dagster.model.open_checkpoint` read it.

The recipe: the corpus's documents in file order, the first 90% for training and the last 10% held out;
a byte-level BPE trained on the training documents; every document followed by `<|endoftext|>` and
the whole concatenated into one token stream; training on random windows of 65 tokens of that stream
(the model reads 64, each window its own context from position 0, and predicts each next token), with
GPT-2's tanh GELU; validation on consecutive windows of the held-out stream, beside a unigram baseline
on the same targets. Seeds and the step count are fixed, so a rerun on the same machine (and the same
thread count) repeats the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tools.build_corpus import CORPUS_PATH, read_corpus

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent.parent / "nx_dagster" / "bundled" / "model"
EOT = "<|endoftext|>"
TRAIN_EVAL_WINDOWS = 1024  # the training loss is reported on about this many evenly spaced windows


@dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_ctx: int = 64
    batch_size: int = 32
    steps: int = 1200
    eval_every: int = 250
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 2


# ---------------------------------------------------------------------------------------------- data


def split_documents(docs: list[dict[str, str]], val_fraction: float) -> tuple[list[str], list[str]]:
    """The first documents train, the last `val_fraction` of them (at least one) are held out."""
    n_val = max(1, round(len(docs) * val_fraction))
    texts = [d["text"] for d in docs]
    return texts[:-n_val], texts[-n_val:]


def train_tokenizer(texts: list[str], vocab_size: int):
    """GPT-2-style byte-level BPE; `<|endoftext|>` is token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def token_stream(tok, texts: list[str]) -> torch.Tensor:
    """Every document's ids followed by `<|endoftext|>`, concatenated: [n_tokens] int64."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Consecutive non-overlapping windows: [n_windows, n_ctx]."""
    n = stream.numel() // n_ctx
    return stream[: n * n_ctx].view(n, n_ctx)


# --------------------------------------------------------------------------------------------- model


class Conv1D(nn.Module):
    """Hugging Face GPT-2's linear layer: the weight is [in, out], so no transpose on save."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)  # [d, 3d]: q, k, v side by side
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [b, nh, t, hd]
        return self.c_proj(a.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd)  # W_in [d, 4d]
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd)  # W_out [4d, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's GELU (HF gelu_new)


class Block(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class TrainableGPT2(nn.Module):
    """GPT-2 with Hugging Face parameter names (under `transformer.` once saved)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [b, t] -> logits [b, t, vocab]; the LM head is `wte` (tied)."""
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(ids.shape[1])))
        for blk in self.h:
            x = blk(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def next_token_loss(model: TrainableGPT2, seqs: torch.Tensor) -> torch.Tensor:
    """seqs [b, n_ctx + 1]: mean cross-entropy (nats) of each of tokens 1..n_ctx given those before.

    The model sees the first n_ctx tokens, so every position, the last included, is trained and scored.
    """
    logits = model(seqs[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: TrainableGPT2, seqs: torch.Tensor, batch_size: int = 64) -> float:
    model.eval()
    total = sum(next_token_loss(model, seqs[i : i + batch_size]).item() * len(seqs[i : i + batch_size])
                for i in range(0, len(seqs), batch_size))
    model.train()
    return total / len(seqs)


def unigram_loss(train_stream: torch.Tensor, val_seqs: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats) on the validation targets of the add-one-smoothed training unigram."""
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return -logp[val_seqs[:, 1:].reshape(-1)].mean().item()


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * done))


def train(
    model: TrainableGPT2, stream: torch.Tensor, val_seqs: torch.Tensor, cfg: TrainConfig
) -> list[tuple[int, float, float]]:
    """Random (n_ctx + 1)-token windows of the training stream; AdamW with decay on matrices only.

    Returns (step, mean training loss of the last `eval_every` steps, validation loss) at every
    `eval_every` steps. Validation never steers training: the step count is fixed.
    """
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.n_ctx + 1)
    curve, running = [], 0.0
    model.train()
    for step in range(cfg.steps):
        starts = torch.randint(0, stream.numel() - cfg.n_ctx, (cfg.batch_size, 1), generator=gen)
        loss = next_token_loss(model, stream[starts + offsets])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            n = (step + 1) - (curve[-1][0] if curve else 0)
            curve.append((step + 1, running / n, evaluate(model, val_seqs)))
            log.info("step %d/%d  train %.3f  val %.3f  lr %.2e", step + 1, cfg.steps, *curve[-1][1:], lr_at(step, cfg))
            running = 0.0
    return curve


# ---------------------------------------------------------------------------------------------- save


def hf_config(cfg: TrainConfig, eot_id: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": 4 * cfg.n_embd, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32",
    }


def save_checkpoint(model: TrainableGPT2, tok, cfg: TrainConfig, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"transformer.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, tok.token_to_id(EOT)), indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))


def write_report(out: Path, cfg: TrainConfig, facts: dict, curve: list[tuple[int, float, float]]) -> None:
    sizes = {f: (out / f).stat().st_size for f in ("config.json", "model.safetensors", "tokenizer.json")}
    n_params = facts["n_params"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items())
    curve_rows = "\n".join(f"| {s} | {t:.3f} | {v:.3f} |" for s, t, v in curve)
    text = f"""# The bundled default model (nx-tiny-gpt2)

A {cfg.n_layer}-layer GPT-2 ({cfg.n_embd}-wide, {cfg.n_head} heads, {4 * cfg.n_embd} MLP neurons per layer,
vocabulary {cfg.vocab_size}, context {cfg.n_ctx}; {n_params:,} parameters) trained from scratch on the
bundled corpus (`nx_dagster/bundled/corpus/python_docs.jsonl.gz`: Python's own documentation, see its
SOURCE.md), with its own byte-level BPE tokenizer. GELU: GPT-2's tanh form (`gelu_new`).

Reproduce (writes this folder, this file included):

    python -m tools.train_default

## Figures

| | nats/token |
| --- | --- |
| validation loss, this model | {facts['val_loss']:.4f} (perplexity {math.exp(facts['val_loss']):.1f}) |
| validation loss, unigram baseline | {facts['unigram_loss']:.4f} (perplexity {math.exp(facts['unigram_loss']):.1f}) |
| training loss, this model ({facts['train_eval_windows']:,} evenly spaced training windows, no dropout) | {facts['train_loss']:.4f} |

- Documents: {facts['n_docs']} in file order; the first {facts['n_train_docs']} train, the last
  {facts['n_val_docs']} are held out for validation.
- Tokens (each document followed by `<|endoftext|>`): {facts['train_tokens']:,} for training,
  {facts['val_tokens']:,} held out; validation uses {facts['val_windows']:,} consecutive windows of
  {cfg.n_ctx + 1} tokens: the model reads the first {cfg.n_ctx} (its own context, from position 0) and is
  scored on each next token ({facts['val_targets']:,} targets). Training windows have the same shape.
- Unigram baseline: the training tokens' frequencies with add-one smoothing over the whole vocabulary,
  scored on the same validation targets.
- The tokenizer was trained on the training documents only.
- Wall time: {facts['wall_s']:.0f} s in all ({facts['train_s']:.0f} s of training; {facts['cpu_s']:.0f} s of CPU time)
  with {cfg.threads} CPU threads, torch {torch.__version__}, Python {sys.version.split()[0]}; the machine's
  15-minute load average at the end was {facts['load15']:.1f} (other work shares it, so wall time varies).
- Files: config.json {sizes['config.json']:,} B, model.safetensors {sizes['model.safetensors']:,} B,
  tokenizer.json {sizes['tokenizer.json']:,} B.

## Hyper-parameters

AdamW (betas 0.9, 0.95; weight decay on matrices only), linear warm-up then cosine decay from `lr` to
`min_lr`, gradient clipping at 1.0, batches of `batch_size` random windows of the training stream.

| setting | value |
| --- | --- |
{rows}

## Training curve

Training loss: the mean over the steps since the previous row (dropout on, if any); validation loss:
the held-out windows at that step.

| step | training loss | validation loss |
| --- | --- | --- |
{curve_rows}
"""
    (out / "TRAINING.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the bundled default GPT-2 on the bundled corpus.")
    parser.add_argument("--corpus", type=Path, default=CORPUS_PATH)
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(steps=args.steps, threads=args.threads, dropout=args.dropout)
    os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.threads))  # the tokenizer trainer's pool
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0, cpu0 = time.perf_counter(), time.process_time()

    docs = read_corpus(args.corpus)
    train_texts, val_texts = split_documents(docs, cfg.val_fraction)
    tok = train_tokenizer(train_texts, cfg.vocab_size)
    train_stream, val_stream = token_stream(tok, train_texts), token_stream(tok, val_texts)
    val_seqs = windows(val_stream, cfg.n_ctx + 1)
    train_windows = windows(train_stream, cfg.n_ctx + 1)
    train_sample = train_windows[:: max(1, len(train_windows) // TRAIN_EVAL_WINDOWS)]
    log.info("%d train / %d val documents, %d / %d tokens", len(train_texts), len(val_texts),
             train_stream.numel(), val_stream.numel())

    model = TrainableGPT2(cfg)
    t1 = time.perf_counter()
    curve = train(model, train_stream, val_seqs, cfg)
    train_s = time.perf_counter() - t1
    facts = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "val_loss": evaluate(model, val_seqs),
        "unigram_loss": unigram_loss(train_stream, val_seqs, cfg.vocab_size),
        "train_loss": evaluate(model, train_sample),
        "n_docs": len(docs), "n_train_docs": len(train_texts), "n_val_docs": len(val_texts),
        "train_tokens": train_stream.numel(), "val_tokens": val_stream.numel(),
        "val_windows": len(val_seqs), "val_targets": val_seqs[:, 1:].numel(), "train_s": train_s,
        "train_eval_windows": len(train_sample),
    }
    save_checkpoint(model, tok, cfg, args.out)
    facts["wall_s"], facts["cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
    facts["load15"] = os.getloadavg()[2] if hasattr(os, "getloadavg") else float("nan")
    write_report(args.out, cfg, facts, curve)
    log.info("validation %.4f nats/token (unigram %.4f), train %.4f; %.0f s; saved to %s",
             facts["val_loss"], facts["unigram_loss"], facts["train_loss"], facts["wall_s"], args.out)


if __name__ == "__main__":
    main()
