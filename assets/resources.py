"""The one resource every asset uses: where data lives, which model and corpus, how to compute.

Fields left unset (None) come from the Settings (`nx_dagster.settings`: NX_HOME, NX_CATALOG, NX_MODEL,
NX_CORPUS) or the embedded default, so the Dagster config shown in the UI stays short and secrets never
enter it; a field set explicitly (Dagster config, or the `nxd run` flag that sets it) wins. Whichever way
a field is set, it reaches the run and every output's version (`versions`). The checkpoint is opened and
validated on first use, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import dagster as dg
from pydantic import PrivateAttr

from nx_dagster import settings
from nx_dagster.errors import NxInputError
from nx_dagster.hashing import short_digest
from nx_dagster.storage import Catalog

if TYPE_CHECKING:  # torch code, imported where a run first needs it: the code location loads without torch
    from nx_dagster.activations.recorder import RecorderSettings
    from nx_dagster.subject import Subject

DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names


def resolve_device(device: str) -> str:
    """`auto` → cuda when available, else cpu; a named device must exist (NxInputError otherwise)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NxInputError(f"device {device!r}", "is not a device name", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NxInputError(f"device {device!r}", "is not available: this torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                               "use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NxInputError(f"device {device!r}", f"does not exist ({torch.cuda.device_count()} GPU(s))",
                               f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type not in ("cpu", "mps"):
        raise NxInputError(f"device {device!r}", "is not supported", "use auto, cpu or cuda[:N]")
    return str(dev)


class NxResource(dg.ConfigurableResource):
    home: Optional[str] = None  # NX_HOME, else ./nx_data (a local folder or s3://bucket/prefix)
    catalog_url: Optional[str] = None  # NX_CATALOG: a SQLite file or postgresql://…; else the embedded default
    model: Optional[str] = None  # NX_MODEL, else the bundled model
    corpus: Optional[str] = None  # NX_CORPUS, else the bundled corpus
    seq_len: int = 64
    max_sequences: Optional[int] = None  # None = the whole corpus
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
        """Refuse to write this data root into an instance that holds another root's history."""
        from assets.runtime.instance import claim_data_root

        if context.instance is not None:
            claim_data_root(context.instance, self.catalog)

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.home, self.catalog_url)  # None: the Settings' NX_HOME, NX_CATALOG
        return self._catalog

    def _check_settings(self) -> None:
        if self.dtype not in DTYPES:
            raise NxInputError(f"dtype {self.dtype!r}", "is not supported", f"use one of {', '.join(DTYPES)}")
        for name in ("top_k", "random_k", "quantile_k", "batch_size"):
            if getattr(self, name) < 1:
                raise NxInputError(f"{name} {getattr(self, name)}", "must be at least 1", f"set {name} to 1 or more")
        if self.seq_len < 2:
            raise NxInputError(f"sequence length {self.seq_len}", "is too short", "use at least 2 tokens (64 is standard)")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise NxInputError(f"max_sequences {self.max_sequences}", "must be at least 1",
                               "leave it unset for the whole corpus")

    @property
    def subject(self) -> Subject:
        if self._subject is None:
            import torch

            from nx_dagster.corpus import CorpusSpec
            from nx_dagster.model.checkpoint import open_checkpoint
            from nx_dagster.subject import Subject

            self._check_settings()
            device = resolve_device(self.device)
            env = settings.current()
            spec = CorpusSpec(self.corpus or env.nx_corpus, self.seq_len, self.max_sequences)
            self._subject = Subject(open_checkpoint(self.model or env.nx_model), spec,
                                    device, getattr(torch, self.dtype))
        return self._subject

    @property
    def recorder(self) -> RecorderSettings:
        from nx_dagster.activations.recorder import RecorderSettings

        return RecorderSettings(self.top_k, self.random_k, self.quantile_k, self.seed, self.batch_size)

    def validate(self) -> None:
        """Everything that can be checked before a table changes: settings, device, data root, checkpoint,
        and the whole corpus (every document parsed, at least one full sequence). Raises NxInputError."""
        from nx_dagster.corpus.validate import validate_corpus

        self.catalog.check_writable()
        s = self.subject
        if s.corpus.seq_len > s.ckpt.config.n_positions:
            raise NxInputError(f"sequence length {s.corpus.seq_len}", f"exceeds the context of {s.name} "
                               f"({s.ckpt.config.n_positions} tokens)", "lower the sequence length (--seq-len)")
        validate_corpus(s.corpus, s.ckpt.load_tokenizer())
        s.corpus.name  # noqa: B018  (hash the corpus now: its identity keys every row)

    # -- versions: what each output depends on, whichever way it was set ------------------------------
    def inputs_version(self) -> dict:
        s = self.subject
        return {"model": s.name, "model_data_version": s.ckpt.data_version, "corpus": s.corpus.name}

    def compute_version(self) -> dict:
        """Settings that change the numbers of a forward pass: dtype and the kind of device."""
        import torch

        return {"dtype": self.dtype, "device": torch.device(self.subject.device).type}

    def activations_settings(self) -> dict:
        r = self.recorder
        return {"top_k": r.top_k, "random_k": r.random_k, "quantile_k": r.quantile_k, "seed": r.seed,
                "recorder": r.version, **self.compute_version()}

    def data_version(self, code_version: str, **extra) -> dg.DataVersion:
        """A data version from the code version, the inputs' identities and `extra` settings."""
        return dg.DataVersion(short_digest({"code": code_version, **self.inputs_version(), **extra}, 16))

    def provenance(self) -> dict:
        """Metadata that names what a materialization describes: the data root, model and corpus."""
        s = self.subject
        return {**self.catalog.describe(), "model": s.name, "corpus": s.corpus.name,
                "corpus_source": s.corpus.source or "bundled"}
