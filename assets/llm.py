"""The LLM resource: which explainer and simulator, which endpoint and models.

`auto` picks the LLM methods when OPENAI_API_KEY is set and the offline `token_lookup` methods when it
is not, so the pipeline runs end to end with no key. The key itself comes from the environment only
(the Settings' OPENAI_API_KEY, read where the step runs); it never enters config shown in the UI, logs,
metadata or tables.
"""

from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import PrivateAttr

from nx_dagster import settings
from nx_dagster.errors import NxInputError
from nx_dagster.explain import Ledger, LLMClient, LLMSettings, default_ledger_path
from nx_dagster.storage import Catalog
from nx_dagster.vocab import EXPLAINERS, JUDGES, JSON_LOGPROBS, SIMULATORS, TOKEN_ACTIVATION_PAIRS, TOKEN_LOOKUP


class LLMResource(dg.ConfigurableResource):
    explainer: str = "auto"  # auto | token_lookup | token_activation_pairs
    simulator: str = "auto"  # auto | token_lookup | json_logprobs | echo_logprobs | logprob_free
    api_key: Optional[str] = None  # unset: OPENAI_API_KEY (the Settings); never set it as plain config
    base_url: Optional[str] = None  # OPENAI_BASE_URL, else OpenAI's
    explainer_model: Optional[str] = None  # NX_EXPLAINER_MODEL, else gpt-4o-mini
    simulator_model: Optional[str] = None  # NX_SIMULATOR_MODEL, else gpt-4o-mini
    judge: str = "auto"  # auto | token_lookup | json_logprobs | logprob_free (detection, fuzzing, intruder)
    judge_model: Optional[str] = None  # NX_JUDGE_MODEL, else the simulator's model
    null_fraction: Optional[float] = None  # share of neurons scored against a null; unset: all offline, 0.1 LLM
    ledger: Optional[str] = None  # NX_LLM_LEDGER, else NX_HOME/llm_ledger.sqlite
    concurrency: int = 8
    timeout_s: float = 60.0

    _client: LLMClient | None = PrivateAttr(default=None)

    def _has_key(self) -> bool:
        return bool(self.api_key or settings.current().openai_api_key)

    @property
    def explainer_name(self) -> str:
        llm = TOKEN_ACTIVATION_PAIRS if self._has_key() else TOKEN_LOOKUP
        name = self.explainer if self.explainer != "auto" else llm
        if name not in EXPLAINERS:
            raise NxInputError(f"explainer {name!r}", "is not known", f"choose auto or one of {', '.join(EXPLAINERS)}")
        return name

    @property
    def simulator_name(self) -> str:
        name = self.simulator if self.simulator != "auto" else (JSON_LOGPROBS if self._has_key() else TOKEN_LOOKUP)
        if name not in SIMULATORS:
            raise NxInputError(f"simulator {name!r}", "is not known", f"choose auto or one of {', '.join(SIMULATORS)}")
        return name

    @property
    def judge_name(self) -> str:
        name = self.judge if self.judge != "auto" else (JSON_LOGPROBS if self._has_key() else TOKEN_LOOKUP)
        if name not in JUDGES:
            raise NxInputError(f"judge {name!r}", "is not known", f"choose auto or one of {', '.join(JUDGES)}")
        return name

    def checked_null_fraction(self) -> Optional[float]:
        if self.null_fraction is not None and not 0 <= self.null_fraction <= 1:
            raise NxInputError(f"null fraction {self.null_fraction}", "is not a share of neurons",
                               "give a number from 0 (no nulls) to 1 (a null for every neuron)")
        return self.null_fraction

    def judge_for(self, catalog: Catalog, progress=None):
        """The judge of the detection, fuzzing and intruder scores (its client made on first use; `progress`
        gets its progress lines)."""
        from nx_dagster.explain.classify import Judge

        name = self.judge_name
        client = self.client(catalog, name != TOKEN_LOOKUP)
        if client is not None and progress is not None:
            client.on_progress = progress
        return Judge(name, client, client.settings.judging_model if client else None)

    def client(self, catalog: Catalog, needed: bool) -> LLMClient | None:
        """The client (created on first use, never at import), or None for offline methods."""
        if not needed:
            return None
        if self._client is None:
            call_settings = LLMSettings.from_env(
                api_key=self.api_key or None, base_url=self.base_url or None,
                explainer_model=self.explainer_model or None, simulator_model=self.simulator_model or None,
                judge_model=self.judge_model or None, concurrency=self.concurrency, timeout_s=self.timeout_s)
            path = Path(self.ledger).expanduser() if self.ledger else default_ledger_path(catalog.local)
            self._client = LLMClient(call_settings, Ledger(path))
        return self._client
