"""The one registry of GELU variants. Every activation row carries one of these names.

`pre_fix` reproduces the published OpenAI datasets, which were computed with the "quick" GELU
x·sigmoid(1.702·x) by mistake; `post_fix` is GPT-2's own tanh approximation (Hugging Face `gelu_new`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from nx_dagster.errors import NxInputError

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    # torch's fused kernel computes 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), GPT-2's formula.
    return torch.nn.functional.gelu(x, approximate="tanh")


@dataclass(frozen=True)
class GeluVariant:
    name: str
    formula: str
    hf_name: str  # the Hugging Face `activation_function` that computes the same thing
    fn: Callable[[torch.Tensor], torch.Tensor]
    meaning: str


VARIANTS: dict[str, GeluVariant] = {
    "pre_fix": GeluVariant(
        "pre_fix", "x*sigmoid(1.702*x)", "quick_gelu", quick_gelu, "reproduces the published datasets"
    ),
    "post_fix": GeluVariant(
        "post_fix",
        "0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))",
        "gelu_new",
        tanh_gelu,
        "GPT-2 as trained; the corrected data",
    ),
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)


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
