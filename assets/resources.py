"""The one resource every asset uses: where data lives, which model and corpus, how to compute.

Empty fields mean "from the environment" (NX_HOME, NX_MODEL, NX_CORPUS) or the embedded default, so
the Dagster config shown in the UI stays short and secrets never enter it. The checkpoint is opened
and validated in `setup_for_execution`, never at import.
"""

from __future__ import annotations

import os

import dagster as dg
import torch
from pydantic import PrivateAttr

from nx_dagster.activations import RecorderSettings
from nx_dagster.corpus import CorpusSpec
from nx_dagster.model.checkpoint import open_checkpoint
from nx_dagster.stages.activations import Subject
from nx_dagster.storage import Catalog
from nx_dagster.storage.catalog import home_from_env

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NxResource(dg.ConfigurableResource):
    home: str = ""
    model: str = ""
    corpus: str = ""
    seq_len: int = 64
    max_sequences: int = 0  # 0 = the whole corpus
    device: str = "auto"  # auto = cuda when available
    dtype: str = "float32"
    batch_size: int = 64
    top_k: int = 20
    random_k: int = 20
    quantile_k: int = 5
    seed: int = 0

    _catalog: Catalog | None = PrivateAttr(default=None)
    _subject: Subject | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._catalog = Catalog(self.home or home_from_env())
        self._catalog.check_writable()

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.home or home_from_env())
        return self._catalog

    @property
    def subject(self) -> Subject:
        if self._subject is None:
            if self.dtype not in DTYPES:
                from nx_dagster.errors import NxInputError

                raise NxInputError(f"dtype {self.dtype!r}", "is not supported", f"use one of {', '.join(DTYPES)}")
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            spec = CorpusSpec(self.corpus or os.environ.get("NX_CORPUS") or None, self.seq_len, self.max_sequences or None)
            self._subject = Subject(open_checkpoint(self.model or os.environ.get("NX_MODEL") or None), spec,
                                    device, DTYPES[self.dtype])
        return self._subject

    @property
    def recorder(self) -> RecorderSettings:
        return RecorderSettings(self.top_k, self.random_k, self.quantile_k, self.seed, self.batch_size)
