"""The one registry of GELU variants. Every activation row carries one of these names.

`pre_fix` reproduces the published OpenAI datasets, which were computed with the "quick" GELU
x·sigmoid(1.702·x) by mistake; `post_fix` is GPT-2's own tanh approximation (Hugging Face `gelu_new`).

Both lineages only mean what they say for a model trained with the tanh GELU: `post_fix` is "the
model's own activation" and `pre_fix` "the published mistake". So a checkpoint is accepted only when
its `config.json` `activation_function` is one of `MODEL_ACTIVATIONS` (the Hugging Face names that
compute `post_fix`'s formula); any other (relu, exact erf `gelu`, `quick_gelu`, silu...) is refused by
`check_model_activation` with a named error rather than recorded under a label that would be false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from nx_dagster.errors import NxInputError
from nx_dagster.vocab import GELU_FORMULAS, GELU_MEANINGS, GELU_VARIANTS, POST_FIX, PRE_FIX


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    # torch's fused kernel computes 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), GPT-2's formula.
    return torch.nn.functional.gelu(x, approximate="tanh")


@dataclass(frozen=True)
class GeluVariant:
    name: str
    formula: str
    # Every Hugging Face `activation_function` name that computes this formula (tests/test_parity.py
    # holds each to transformers' own implementation); the first is the canonical one.
    hf_names: tuple[str, ...]
    fn: Callable[[torch.Tensor], torch.Tensor]
    meaning: str

    @property
    def hf_name(self) -> str:
        return self.hf_names[0]


VARIANTS: dict[str, GeluVariant] = {
    PRE_FIX: GeluVariant(
        PRE_FIX, GELU_FORMULAS[PRE_FIX], ("quick_gelu",), quick_gelu, GELU_MEANINGS[PRE_FIX]
    ),
    POST_FIX: GeluVariant(
        POST_FIX,
        GELU_FORMULAS[POST_FIX],
        # gelu_fast writes the same polynomial as x·(1 + 0.044715·x²) with √(2/π) rounded to 0.7978845608.
        ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate"),
        tanh_gelu,
        GELU_MEANINGS[POST_FIX],
    ),
}
VARIANT_NAMES: tuple[str, ...] = GELU_VARIANTS
OWN_VARIANT = POST_FIX  # the lineage that is the checkpoint's own activation
MODEL_ACTIVATIONS: tuple[str, ...] = VARIANTS[OWN_VARIANT].hf_names


def check_model_activation(hf_name: object, where: str) -> None:
    """Raise NxInputError unless a checkpoint's `activation_function` is `post_fix`'s formula."""
    if hf_name in MODEL_ACTIVATIONS:
        return
    raise NxInputError(
        where,
        f"sets activation_function={hf_name!r}, but nx_dagster records GPT-2's tanh GELU as the model's own "
        f"activation ({OWN_VARIANT}) beside the published quick GELU ({PRE_FIX}), so this model's activations "
        "would be recorded under a false label",
        f"use a checkpoint whose activation_function is one of {', '.join(MODEL_ACTIVATIONS)} "
        "(the tanh GELU GPT-2 was trained with)",
    )


def get_variant(name: str) -> GeluVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise NxInputError(
            f"GELU variant {name!r}", "is not a known variant", f"use one of {', '.join(VARIANTS)}"
        ) from None


def parse_variants(text: str | None) -> list[str]:
    """'pre_fix,post_fix' -> ['pre_fix', 'post_fix'] (validated); None -> all variants."""
    if not text:
        return list(VARIANT_NAMES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        get_variant(n)
    return names
