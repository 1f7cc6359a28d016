"""A small price table for cost estimates (USD per 1M tokens, list prices). Unknown models cost None."""

from __future__ import annotations

# model: (input, output) USD per 1M tokens
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00),
    "babbage-002": (0.40, 0.40),
}


def price_of(model: str) -> tuple[float, float] | None:
    """Prices of `model`, also for dated snapshots ('gpt-4o-mini-2024-07-18'); the longest name wins."""
    if model in PRICES_PER_MTOK:
        return PRICES_PER_MTOK[model]
    matches = [m for m in PRICES_PER_MTOK if model.startswith(m + "-") and model[len(m) + 1:][:1].isdigit()]
    return PRICES_PER_MTOK[max(matches, key=len)] if matches else None


def estimate_cost(model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    price = price_of(model)
    if price is None or prompt_tokens is None:
        return None
    return (prompt_tokens * price[0] + (completion_tokens or 0) * price[1]) / 1e6
