"""The LLM client seam: any OpenAI-compatible endpoint, bounded concurrency, our own retry policy, a ledger.

- Endpoint and key: explicit settings, else the Settings' `OPENAI_BASE_URL` / `OPENAI_API_KEY` (models:
  explicit, else `NX_EXPLAINER_MODEL` / `NX_SIMULATOR_MODEL`). The `openai` client is built on first use,
  never at import, with the SDK's own retries off (`max_retries=0`) so that this module's policy is the
  one in force.
- Retries with exponential backoff and jitter on 429, 5xx, timeouts and connection errors, waiting at
  least `Retry-After` when the server sends it. No retry on other 4xx. A 401/403 raises `LLMAuthError`
  at once and stops the whole `map`. A connection error (refused, DNS, TLS) before this client has
  reached the endpoint once raises `LLMUnreachableError` after `connect_attempts` tries (about a second),
  naming OPENAI_BASE_URL; once the endpoint has answered, connection errors are retried like 5xx.
- Every call is written to the `Ledger` as `pending` before it is sent and its outcome as it returns; a
  request whose key already has an `ok`, `unusable` or `rejected` outcome is answered from the ledger.
- `map_usable` also checks each reply with the caller's parser: an unparseable reply is marked `unusable`
  and re-asked (a new key: the attempt number) up to `reasks` more times per run.
- Secrets never leave: errors and ledger rows are redacted, the endpoint is stored without credentials.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nx_dagster import settings as nx_settings
from nx_dagster.errors import NxInputError
from nx_dagster.explain.ledger import (
    AUTH_ERROR, FINAL_STATUSES, OK, PENDING, REJECTED, TRANSIENT, UNUSABLE, Ledger, LedgerEntry, call_key, redact,
    sanitize_url,
)
from nx_dagster.explain.pricing import estimate_cost
from nx_dagster.explain.retry import backoff_delay, is_transient_status, retry_after_seconds

log = logging.getLogger(__name__)
OPENAI_BASE_URL, DEFAULT_MODEL = nx_settings.OPENAI_BASE_URL, nx_settings.DEFAULT_MODEL
_MAX_ASKS = 10  # attempt numbers per request over all runs, whatever `reasks` is


class LLMAuthError(NxInputError):
    """The endpoint refused the key (401/403): the run stops."""


class LLMUnreachableError(NxInputError):
    """The endpoint could not be reached at all (connection refused, DNS or TLS failure): the run stops."""


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to call. `from_env` fills what is not given from the Settings (the environment)."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = OPENAI_BASE_URL
    explainer_model: str = DEFAULT_MODEL
    simulator_model: str = DEFAULT_MODEL
    judge_model: str | None = None  # None: simulator_model
    concurrency: int = 8
    timeout_s: float = 60.0
    max_attempts: int = 6  # HTTP attempts per call (429/5xx/timeouts/connection errors are retried)
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    reasks: int = 2  # map_usable: re-asks per request and run after an unusable reply
    connect_attempts: int = 2  # attempts before an endpoint never reached is declared unreachable

    @classmethod
    def from_env(cls, api_key: str | None = None, base_url: str | None = None, explainer_model: str | None = None,
                 simulator_model: str | None = None, judge_model: str | None = None, **kwargs: Any) -> "LLMSettings":
        """Explicit arguments win over the Settings."""
        s = nx_settings.current()
        return cls(api_key=api_key or s.secret("openai_api_key"), base_url=base_url or s.openai_base_url,
                   explainer_model=explainer_model or s.nx_explainer_model,
                   simulator_model=simulator_model or s.nx_simulator_model,
                   judge_model=judge_model or s.nx_judge_model, **kwargs)

    @property
    def judging_model(self) -> str:
        """The model that answers judge questions."""
        return self.judge_model or self.simulator_model


@dataclass(frozen=True)
class LLMRequest:
    """One request: `kind` is 'chat' (chat.completions) or 'completion' (completions). `attempt` > 0 is a
    re-ask of the same request after an unusable reply: sent unchanged, ledgered under its own key."""

    kind: str
    model: str
    params: dict[str, Any]
    attempt: int = 0


@dataclass(frozen=True)
class LLMResult:
    call_key: str
    status: str
    response: dict | None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    from_ledger: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class CallStats:
    """What one client did: for Dagster metadata."""

    requests_sent: int = 0  # HTTP requests, retries included
    answered_from_ledger: int = 0
    ok: int = 0
    failed: int = 0
    unusable: int = 0  # paid replies the caller could not use (also counted in `failed`)
    reasked: int = 0  # requests sent again (new attempt number) after an unusable reply
    pending_resent: int = 0  # calls found `pending` (in flight when a run died: maybe paid) and sent again
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown_calls: int = 0


class LLMClient:
    """Sends `LLMRequest`s; thread-safe. Use `map` for many requests at bounded concurrency."""

    def __init__(self, settings: LLMSettings | None = None, ledger: Ledger | None = None):
        self.settings = settings or LLMSettings.from_env()
        self.ledger = ledger if ledger is not None else Ledger()
        self.endpoint = sanitize_url(self.settings.base_url)
        self.stats = CallStats()
        self.keys_used: dict[str, None] = {}  # ordered set of every key asked for
        # called with a line of progress (done/total, rate, time left) every ~5 s while requests run
        self.on_progress: Callable[[str], None] | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reached = False  # the endpoint has sent at least one HTTP response

    def key(self, request: LLMRequest) -> str:
        return call_key(self.endpoint, request.kind, request.model, request.params, request.attempt)

    def call(self, request: LLMRequest) -> LLMResult:
        return self.map([request])[0]

    def map(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """Results in the order of `requests`; identical requests are sent once. Raises LLMAuthError,
        LLMUnreachableError."""
        self._stop.clear()
        keys = [self.key(r) for r in requests]
        results: dict[str, LLMResult] = {}
        todo: dict[str, LLMRequest] = {}
        for key, req in zip(keys, requests):
            self.keys_used[key] = None
            if key in results or key in todo:
                continue
            entry = self.ledger.get(key)
            if entry is not None and entry.status in FINAL_STATUSES:
                results[key] = LLMResult(key, entry.status, entry.response, entry.error, entry.http_status,
                                         entry.attempts, from_ledger=True)
                self._count(answered_from_ledger=1, ok=int(entry.status == OK), failed=int(entry.status != OK))
            else:
                todo[key] = req
                self._count(pending_resent=int(entry is not None and entry.status == PENDING),
                            reasked=int(req.attempt > 0))
        if todo:
            log.info("LLM: %d requests to send (%d answered from the ledger), concurrency %d",
                     len(todo), len(results), self.settings.concurrency)
            pool = ThreadPoolExecutor(max_workers=max(1, min(self.settings.concurrency, len(todo))))
            try:
                futures = {pool.submit(self._execute, k, r): k for k, r in todo.items()}
                t0 = last = time.monotonic()
                for done, fut in enumerate(as_completed(futures), 1):
                    results[futures[fut]] = fut.result()
                    now = time.monotonic()
                    if self.on_progress is not None and (now - last >= 5 or done == len(futures)):
                        last, rate = now, done / max(now - t0, 1e-9)
                        self.on_progress(f"LLM requests: {done:,}/{len(futures):,} ({100 * done / len(futures):.0f}%), "
                                         f"{rate:.1f}/s, ~{(len(futures) - done) / rate:.0f} s left")
            except BaseException:
                self._stop.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return [results[k] for k in keys]

    def map_usable(self, requests: Sequence[LLMRequest], parse: Callable[[int, LLMResult], tuple[Any, str | None]],
                   reasks: int | None = None) -> list[tuple[LLMResult, Any, str | None]]:
        """`map`, then `parse(i, result)` -> (value, failure) on each `ok` reply. A failure marks the call
        `unusable` and re-asks request i (attempt + 1) until it parses, at most `reasks` (settings) more
        sends per request in this run; unusable attempts already in the ledger are skipped, not resent.
        Returns (last result, value, failure) per request; failure is None exactly when value is usable."""
        reasks = self.settings.reasks if reasks is None else reasks
        out: list[tuple[LLMResult, Any, str | None] | None] = [None] * len(requests)
        attempt, sent = [0] * len(requests), [0] * len(requests)
        todo = list(range(len(requests)))
        while todo:
            results = self.map([dataclasses.replace(requests[i], attempt=attempt[i]) for i in todo])
            again = []
            for i, res in zip(todo, results):
                value, failure = parse(i, res) if res.ok else (None, res.error)
                if res.ok and failure is not None:
                    if self.ledger.mark_unusable(res.call_key, failure):
                        self._count(ok=-1, failed=1, unusable=1)
                    res = dataclasses.replace(res, status=UNUSABLE, error=failure)
                if res.status == UNUSABLE:
                    sent[i] += not res.from_ledger
                    if sent[i] <= reasks and attempt[i] < _MAX_ASKS - 1:
                        attempt[i] += 1
                        again.append(i)
                        continue
                    failure = f"unusable reply ({attempt[i] + 1} asks): {failure}"
                out[i] = (res, value, failure)
            todo = again
        return out  # type: ignore[return-value]

    # -- one call -----------------------------------------------------------------------------------
    def _count(self, **deltas: float) -> None:
        with self._lock:
            for name, d in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + d)

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = self.settings.api_key
                if not key and self.endpoint == sanitize_url(OPENAI_BASE_URL):
                    raise NxInputError("OPENAI_API_KEY", "is not set, and the endpoint is OpenAI's",
                                       "export OPENAI_API_KEY=<your key>, or use the offline explainer and "
                                       "simulator `token_lookup`")
                self._client = openai.OpenAI(api_key=key or "not-needed", base_url=self.settings.base_url,
                                             max_retries=0, timeout=self.settings.timeout_s)
            return self._client

    def _send(self, client: Any, request: LLMRequest) -> tuple[dict, str]:
        """The reply as parsed JSON and as sent (kept verbatim in the ledger)."""
        api = client.chat.completions if request.kind == "chat" else client.completions
        raw = api.with_raw_response.create(model=request.model, **request.params)
        text = raw.text
        try:
            reply = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"the endpoint returned a non-JSON reply: {text[:200]!r}") from None
        if not isinstance(reply, dict) or "error" in reply and "choices" not in reply:
            raise ValueError(f"the endpoint returned no completion: {text[:200]!r}")
        return reply, text

    def _execute(self, key: str, request: LLMRequest) -> LLMResult:
        import openai

        secrets = [self.settings.api_key]
        if self.settings.base_url.rstrip("/") != self.endpoint:  # credentials or a query in the URL
            secrets.append(self.settings.base_url)
        client = self._openai()  # a missing key raises here, before anything is sent
        attempts, status, http_status, error = 0, TRANSIENT, None, None
        while not self._stop.is_set():
            if attempts == 0:  # from here on the endpoint may answer, and bill, this call
                self._record(key, request, PENDING, None, None, None, 0, None)
            attempts += 1
            retry_after = None
            t0 = time.monotonic()
            self._count(requests_sent=1)
            try:
                response, text = self._send(client, request)
            except openai.APIConnectionError as e:
                if not isinstance(e, openai.APITimeoutError) and not self._reached \
                        and attempts >= self.settings.connect_attempts:
                    self._unreachable(key, request, attempts, redact(str(e.__cause__ or e), secrets))
                if isinstance(e, openai.APITimeoutError):
                    http_status, error = None, f"timed out after {self.settings.timeout_s:g} s"
                else:
                    http_status, error = None, redact(f"connection error: {e.__cause__ or e}", secrets)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                msg = redact(str(e.message), secrets)
                self._finish(key, request, AUTH_ERROR, None, e.status_code, msg, attempts, time.monotonic() - t0)
                self._stop.set()
                raise LLMAuthError(
                    "OPENAI_API_KEY", f"the endpoint {self.endpoint} refused it (HTTP {e.status_code}: {msg})",
                    "set OPENAI_API_KEY to a valid key for this endpoint (and OPENAI_BASE_URL to the endpoint "
                    "you mean), then run again; answered calls are kept") from None
            except openai.APIStatusError as e:
                self._reached = True
                http_status, error = e.status_code, redact(f"HTTP {e.status_code}: {e.message}", secrets)
                if not is_transient_status(e.status_code):
                    return self._finish(key, request, REJECTED, None, http_status, error, attempts,
                                        time.monotonic() - t0)
                retry_after = retry_after_seconds(e.response.headers)
            except (openai.APIResponseValidationError, ValueError) as e:  # HTTP 200, paid, unusable
                self._reached = True
                return self._finish(key, request, UNUSABLE, None, 200, redact(f"malformed reply: {e}", secrets),
                                    attempts, time.monotonic() - t0)
            else:
                self._reached = True
                return self._finish(key, request, OK, response, 200, None, attempts, time.monotonic() - t0, text)
            if attempts >= self.settings.max_attempts:
                break
            delay = backoff_delay(attempts, retry_after, self.settings.backoff_s, self.settings.max_backoff_s)
            log.warning("LLM call %s… failed (%s); retry %d/%d in %.2f s", key[:12], error, attempts,
                        self.settings.max_attempts - 1, delay)
            if self._stop.wait(delay):
                break
        if attempts == 0:  # stopped before sending: nothing to record
            return LLMResult(key, TRANSIENT, None, "stopped: the run was cancelled")
        error = f"gave up after {attempts} attempts: {error}"
        return self._finish(key, request, status, None, http_status, error, attempts, None)

    def _unreachable(self, key: str, request: LLMRequest, attempts: int, cause: str | None) -> None:
        self._record(key, request, TRANSIENT, None, None, f"unreachable: {cause}", attempts, None)
        self._stop.set()
        raise LLMUnreachableError(
            "OPENAI_BASE_URL", f"the endpoint {self.endpoint} cannot be reached ({cause})",
            "start the server, or set OPENAI_BASE_URL to an endpoint this machine can reach (host, port, "
            "https certificate), then run again; answered calls are kept")

    def _record(self, key: str, request: LLMRequest, status: str, response: dict | None, http_status: int | None,
                error: str | None, attempts: int, latency: float | None, text: str | None = None) -> tuple:
        usage = (response or {}).get("usage") or {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cost = estimate_cost(request.model, pt, ct) if status == OK else None
        self.ledger.record(LedgerEntry(
            call_key=key, endpoint=self.endpoint, model=request.model, kind=request.kind,
            request_json=json.dumps(request.params, sort_keys=True, ensure_ascii=False),
            response_json=text,
            status=status, http_status=http_status, error=error, prompt_tokens=pt, completion_tokens=ct,
            cost_usd=cost, latency_s=latency, attempts=attempts))
        return pt, ct, cost

    def _finish(self, key: str, request: LLMRequest, status: str, response: dict | None, http_status: int | None,
                error: str | None, attempts: int, latency: float | None, text: str | None = None) -> LLMResult:
        pt, ct, cost = self._record(key, request, status, response, http_status, error, attempts, latency, text)
        self._count(ok=int(status == OK), failed=int(status != OK), unusable=int(status == UNUSABLE),
                    prompt_tokens=pt or 0, completion_tokens=ct or 0, cost_usd=cost or 0.0,
                    cost_unknown_calls=int(status == OK and cost is None))
        if status != OK:
            log.warning("LLM call %s… %s: %s", key[:12], status, error)
        return LLMResult(key, status, response, error, http_status, attempts)
