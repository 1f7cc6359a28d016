"""What a run works on: a checkpoint, its weights loaded once on a device, and a corpus.

Its own module (not in `model/`) because it joins the model and the corpus, which know nothing of each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nx_dagster.corpus import CorpusSpec
from nx_dagster.model.checkpoint import Checkpoint


@dataclass
class Subject:
    """The checkpoint, its loaded weights and the corpus a run works on."""

    ckpt: Checkpoint
    corpus: CorpusSpec
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    _model: object = field(default=None, repr=False)

    @property
    def model(self):
        if self._model is None:
            self._model = self.ckpt.load_model(self.device, self.dtype)
        return self._model

    @property
    def name(self) -> str:
        return self.ckpt.name
