"""GPT-2 subject models: checkpoint loading, the forward pass, the GELU registry."""

from nx_dagster.model.checkpoint import Checkpoint, open_checkpoint
from nx_dagster.model.gelu import VARIANT_NAMES, VARIANTS, get_variant
from nx_dagster.model.gpt2 import GPT2, GPT2Config

__all__ = ["Checkpoint", "open_checkpoint", "VARIANT_NAMES", "VARIANTS", "get_variant", "GPT2", "GPT2Config"]
