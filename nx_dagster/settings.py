"""Every setting of nx_dagster in one typed object, read from the environment in one place.

Each setting has one name, its environment variable (the field is that name in lower case), one default
and one validator; a bad value is the usual one-line `NxInputError` naming the variable and the fix.
`current()` is the Settings in effect: the environment's, parsed once per process for as long as the
variables keep their values (a process that changes its environment, as tests do, gets them parsed
again), or the explicit Settings of the innermost `use(...)`. Explicit values (CLI flags, resource
fields, function arguments) win over these defaults where they are given; `docs/settings.md` is
`markdown_table()`.

The AWS_* fields are the ones the S3 code passes on explicitly (region, endpoint, profile, keys, config
files); botocore's own resolution (profiles, instance metadata) fills in the rest. DAGSTER_HOME belongs to
Dagster and TRITON_INTERPRET to Triton: neither is here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nx_dagster.errors import NxInputError

DEFAULT_HOME = "./nx_data"
OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
LEDGER_FILE = "llm_ledger.sqlite"
SECONDS_FIELDS = {"nx_catalog_wait_s": True, "nx_worker_beat_s": False, "nx_worker_stale_s": False}  # -> 0 allowed


def _seconds(name: str, raw: Any, default: float, allow_zero: bool) -> float:
    """`raw` (a variable's text or a number) as seconds; NxInputError naming `name` unless it is a
    number > 0 (>= 0 with `allow_zero`); blank is `default`."""
    if isinstance(raw, str) and not raw.strip():
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not (value >= 0 if allow_zero else value > 0):
        raise NxInputError(f"{name} {raw!r}", f"is not a number of seconds {'>=' if allow_zero else '>'} 0",
                           f"set it to e.g. {default:g} (the default), or unset it")
    return value


class Settings(BaseSettings):
    """The settings of nx_dagster; each field is read from the environment variable of its name."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True, case_sensitive=False)

    # the data root
    nx_home: str = Field(DEFAULT_HOME, description="the data root: a local folder or s3://bucket/prefix")
    nx_catalog: Optional[str] = Field(
        None, description="the DuckLake metadata: a SQLite file (sqlite:PATH) or "
                          "postgresql://user:password@host:port/db (unset: catalog.sqlite in the local state folder)")
    nx_state: Optional[Path] = Field(
        None, description="the local state folder of an s3:// data root (unset: ~/.nx_dagster/s3/BUCKET/PREFIX); "
                          "a local root keeps its state in itself")
    nx_catalog_wait_s: float = Field(
        600.0, description="seconds a writer (or reader) waits for the catalog before failing with CatalogBusy")
    # inputs and compute
    nx_model: Optional[str] = Field(None, description="the checkpoint: 'bundled', a folder, an fsspec URL or a "
                                                      "Hugging Face Hub id (unset: the bundled model)")
    nx_corpus: Optional[str] = Field(None, description="the corpus: 'bundled', text/JSONL/Parquet files, a glob or a "
                                                       "URL (unset: the bundled corpus)")
    nx_cache: Path = Field(Path("~/.cache/nx_dagster"),
                           description="remembered file hashes and fetched checkpoints")
    nx_recorder: Literal["auto", "fused", "torch", "dense", "triton"] = Field(
        "auto", description="how activations are recorded: auto (the fused numba kernel on CPU, Triton on CUDA), "
                            "torch, dense or triton (interpreted on CPU)")
    nx_compile: bool = Field(True, description="torch.compile the moment sums (0: eager ops)")
    # the LLM
    openai_api_key: Optional[SecretStr] = Field(
        None, description="the key of the LLM endpoint (unset: the offline token_lookup methods under auto)")
    openai_base_url: str = Field(OPENAI_BASE_URL, description="an OpenAI-compatible endpoint")
    nx_explainer_model: str = Field(DEFAULT_MODEL, description="the chat model that writes explanations")
    nx_simulator_model: str = Field(DEFAULT_MODEL, description="the model that simulates activations")
    nx_judge_model: Optional[str] = Field(
        None, description="the chat model that judges detection, fuzzing and intruder questions (unset: "
                          "NX_SIMULATOR_MODEL)")
    nx_llm_ledger: Optional[Path] = Field(
        None, description=f"the LLM call ledger (unset: {LEDGER_FILE} in the data root's local state folder)")
    # workers and deployments
    nx_worker_beat_s: float = Field(10.0, description="seconds between two heartbeats (and sweeps) of a running nxd")
    nx_worker_stale_s: float = Field(
        120.0, description="a run of another host whose last heartbeat is older than this many seconds is dead "
                           "(more than twice NX_WORKER_BEAT_S)")
    nx_layers_per_run: int = Field(1, description="layers one run (one pod or worker) records in a deployment's "
                                                  "backfill")
    # object storage
    nx_s3_url_style: Optional[Literal["path", "vhost"]] = Field(
        None, description="S3 addressing: path or vhost (unset: path with an endpoint URL, else vhost)")
    aws_access_key_id: Optional[SecretStr] = Field(None, description="S3 key id (unset: botocore's chain)")
    aws_secret_access_key: Optional[SecretStr] = Field(None, description="S3 secret key")
    aws_session_token: Optional[SecretStr] = Field(None, description="S3 session token")
    aws_profile: Optional[str] = Field(None, description="the profile in ~/.aws/config (unset: default)")
    aws_region: Optional[str] = Field(None, description="the S3 region (else AWS_DEFAULT_REGION, the profile's, "
                                                        "us-east-1)")
    aws_default_region: Optional[str] = Field(None, description="the S3 region when AWS_REGION is unset")
    aws_endpoint_url_s3: Optional[str] = Field(None, description="an S3-compatible server, e.g. "
                                                                 "http://127.0.0.1:9000 (MinIO, moto)")
    aws_endpoint_url: Optional[str] = Field(None, description="the same, when AWS_ENDPOINT_URL_S3 is unset")
    aws_config_file: Optional[str] = Field(None, description="botocore's config file (unset: ~/.aws/config)")
    aws_shared_credentials_file: Optional[str] = Field(
        None, description="botocore's credentials file (unset: ~/.aws/credentials)")
    # the terminal
    no_color: bool = Field(False, description="any value: no ANSI colours in `nxd neuron --color auto`")

    @field_validator(*SECONDS_FIELDS, mode="before")
    @classmethod
    def _seconds_field(cls, raw: Any, info: ValidationInfo) -> float:
        name = info.field_name
        return _seconds(name.upper(), raw, cls.model_fields[name].default, allow_zero=SECONDS_FIELDS[name])

    @field_validator("nx_layers_per_run", mode="before")
    @classmethod
    def _layers_per_run(cls, raw: Any) -> int:
        value = int(raw) if str(raw).isdigit() else 0
        if value < 1:
            raise NxInputError(f"NX_LAYERS_PER_RUN {raw!r}", "is not a positive integer",
                               "set it to the number of layers one run (one pod) records, e.g. 1")
        return value

    @field_validator("nx_recorder", mode="before")
    @classmethod
    def _lower(cls, raw: Any) -> Any:
        return raw.lower() if isinstance(raw, str) else raw

    @field_validator("no_color", mode="before")
    @classmethod
    def _any_value(cls, raw: Any) -> bool:
        return bool(raw)  # https://no-color.org: set to anything

    @field_validator("nx_state", "nx_cache", "nx_llm_ledger")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @model_validator(mode="after")
    def _heartbeat(self) -> "Settings":
        if self.nx_worker_stale_s <= 2 * self.nx_worker_beat_s:
            raise NxInputError(f"NX_WORKER_STALE_S {self.nx_worker_stale_s:g}",
                               f"is not more than twice NX_WORKER_BEAT_S ({self.nx_worker_beat_s:g})",
                               "give it several heartbeats, e.g. 12 times NX_WORKER_BEAT_S")
        return self

    def secret(self, name: str) -> str | None:
        """The plain value of a SecretStr field (None when unset)."""
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes` (field names), validated like the environment's values."""
        return _checked(lambda: Settings.model_validate({**dict(self), **changes}))  # every field: no environment


NAMES = tuple(name.upper() for name in Settings.model_fields)  # the environment variables read
_DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}


def _shown(default: Any) -> str:
    """A default as one writes it in the environment."""
    return str(default).lower() if isinstance(default, bool) else str(default)


def _checked(build) -> Settings:
    """`build()`, with a validation error turned into the one-line NxInputError of its first bad setting."""
    try:
        return build()
    except ValidationError as e:
        err = e.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, NxInputError):
            raise cause from None
        name = str(err["loc"][0]).upper() if err["loc"] else "a setting"
        default = _DEFAULTS.get(name.lower())
        fix = f"set it to e.g. {_shown(default)} (the default), or unset it" if default is not None else \
            "correct it, or unset it"
        raise NxInputError(f"{name} {err['input']!r}", err["msg"][0].lower() + err["msg"][1:], fix) from None


@lru_cache(maxsize=8)
def _from_environment(_values: tuple) -> Settings:
    return _checked(Settings)


_explicit: list[Settings] = []  # the stack of `use(...)`


def current() -> Settings:
    """The Settings in effect: those of the innermost `use(...)`, else the environment's. Raises
    NxInputError (one line, naming the variable) for a bad value."""
    if _explicit:
        return _explicit[-1]
    return _from_environment(tuple(os.environ.get(name) for name in NAMES))


@contextmanager
def use(settings: Settings) -> Iterator[Settings]:
    """Make `settings` the ones in effect in this process (all threads) until the block ends."""
    _explicit.append(settings)
    try:
        yield settings
    finally:
        _explicit.pop()


def from_values(**values: Any) -> Settings:
    """Settings from `values` (field names) and the defaults, ignoring the environment (every field is
    given, and given values win over the environment's)."""
    return _checked(lambda: Settings.model_validate({**_DEFAULTS, **values}))


def markdown_table() -> str:
    """docs/settings.md: every setting's name, default and meaning."""
    lines = ["# Settings", "",
             "Every setting of nx_dagster is an environment variable, read in one place (`nx_dagster.settings`,",
             "one typed `Settings`); a bad value stops with a one-line error naming the variable and the fix.",
             "Explicit values win over them: `nxd` flags (`--home`, `--model`, `--ledger`...) and the fields of",
             "the Dagster resources `nx` and `llm` set in run config. Blank means unset.", "",
             "| Name | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        shown = "unset" if field.default is None else f"`{_shown(field.default)}`"
        lines.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    lines += ["", "Read by others, not by `Settings`: `DAGSTER_HOME` (Dagster's instance folder; unset: the",
              "data root's `.dagster`), `NX_DAGSTER_PG_URL` (read by `deploy/dagster.yaml`), `NX_CELERY_BROKER`",
              "and `NX_CELERY_BACKEND` (`deploy/celery`), `TRITON_INTERPRET` (Triton's; set to 1 where no GPU",
              "runs the recorder's kernels).", "",
              "This file is `nx_dagster.settings.markdown_table()`; `tests/test_settings.py` checks that they agree."]
    return "\n".join(lines) + "\n"
