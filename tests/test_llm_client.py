"""The LLM client seam against a real local HTTP server, through the real `openai` client (never patched):
retries, Retry-After, timeouts, auth failures, the ledger, resuming a killed run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nx_dagster.explain import (
    LLMAuthError, LLMClient, LLMRequest, LLMSettings, Ledger, explain_neurons, pair_by_neuron, simulate,
    simulations_table, sync_ledger,
)
from nx_dagster.explain.ledger import redact, sanitize_url
from tests.llm_server import Fault, FakeLLMServer, demo_neurons

KEY = "sk-test-SECRET-0123456789"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with FakeLLMServer(api_key=KEY) as s:
        yield s


def make_client(server: FakeLLMServer, tmp_path: Path, **kw) -> LLMClient:
    settings = dict(api_key=KEY, base_url=server.base_url, concurrency=1, timeout_s=2.0, max_attempts=3,
                    backoff_s=0.01, max_backoff_s=0.05)
    settings.update(kw)
    return LLMClient(LLMSettings(**settings), Ledger(tmp_path / "ledger.sqlite"))


def chat(text: str = "hello") -> LLMRequest:
    return LLMRequest("chat", "gpt-4o-mini", {"messages": [{"role": "user", "content": text}], "max_tokens": 5})


def test_settings_explicit_args_override_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-000000")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.example/v1")
    monkeypatch.setenv("NX_SIMULATOR_MODEL", "sim-from-env")
    s = LLMSettings.from_env()
    assert (s.api_key, s.base_url, s.simulator_model) == ("sk-from-env-000000", "http://env.example/v1", "sim-from-env")
    s = LLMSettings.from_env(api_key="sk-explicit-0000", base_url="http://x/v1", simulator_model="m",
                             explainer_model="e")
    assert (s.api_key, s.base_url, s.simulator_model, s.explainer_model) == \
        ("sk-explicit-0000", "http://x/v1", "m", "e")
    assert "sk-" not in repr(s)


def test_no_key_for_openai_stops_before_sending(tmp_path, monkeypatch):
    from nx_dagster.errors import NxInputError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    client = LLMClient(LLMSettings.from_env(), Ledger(tmp_path / "ledger.sqlite"))
    with pytest.raises(NxInputError, match="OPENAI_API_KEY.*token_lookup"):
        client.call(chat())
    assert client.ledger.count() == 0


def test_client_is_lazy_and_answers_come_back_once(server, tmp_path):
    client = make_client(server, tmp_path)
    assert client._client is None  # nothing built before the first request
    results = client.map([chat("a"), chat("b"), chat("a")])
    assert [r.ok for r in results] == [True, True, True]
    assert results[0].call_key == results[2].call_key
    assert server.count() == 2  # the duplicate was sent once
    again = make_client(server, tmp_path).map([chat("a"), chat("b")])
    assert server.count() == 2 and all(r.from_ledger for r in again)
    rows = client.ledger.entries()
    assert len(rows) == 2 and {r.status for r in rows} == {"ok"}
    assert rows[0].prompt_tokens is not None and rows[0].cost_usd is not None and rows[0].latency_s > 0


def test_429_waits_for_retry_after_then_succeeds(server, tmp_path):
    server.add_fault(Fault(status=429, headers={"Retry-After": "1"}))
    t0 = time.monotonic()
    result = make_client(server, tmp_path).call(chat())
    assert result.ok and result.attempts == 2 and server.count() == 2
    assert time.monotonic() - t0 >= 1.0  # backoff alone would be ~10 ms


def test_500_is_retried_and_exhaustion_is_recorded_then_retried_on_rerun(server, tmp_path):
    server.add_fault(Fault(status=500))
    assert make_client(server, tmp_path).call(chat("x")).ok and server.count() == 2
    server.reset()
    server.add_fault(*[Fault(status=503)] * 3)
    failed = make_client(server, tmp_path).call(chat("y"))
    assert failed.status == "transient" and failed.attempts == 3 and "503" in failed.error
    assert server.count() == 3
    rerun = make_client(server, tmp_path).call(chat("y"))  # transient failures are sent again
    assert rerun.ok and server.count() == 4
    assert len(Ledger(tmp_path / "ledger.sqlite").entries()) == 2


def test_slow_reply_past_the_timeout_is_retried(server, tmp_path):
    server.add_fault(Fault(delay_s=1.5))
    t0 = time.monotonic()
    result = make_client(server, tmp_path, timeout_s=0.3).call(chat())
    assert result.ok and result.attempts == 2 and time.monotonic() - t0 < 1.4
    server.add_fault(*[Fault(delay_s=1.0)] * 2)
    result = make_client(server, tmp_path, timeout_s=0.2, max_attempts=2).call(chat("slow"))
    assert result.status == "transient" and "timed out" in result.error


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_is_not_retried_now_or_on_rerun(server, tmp_path, status):
    server.add_fault(Fault(status=status, message="bad parameter"))
    result = make_client(server, tmp_path).call(chat())
    assert result.status == "rejected" and result.http_status == status and server.count() == 1
    again = make_client(server, tmp_path).call(chat())
    assert again.status == "rejected" and again.from_ledger and server.count() == 1
    summary = Ledger(tmp_path / "ledger.sqlite").summary()
    assert (summary["calls"], summary["rejected"], summary["ok"]) == (1, 1, 0)


def test_403_stops_the_run_too(server, tmp_path):
    server.add_fault(Fault(status=403, message="project has no access"))
    with pytest.raises(LLMAuthError, match="OPENAI_API_KEY.*403"):
        make_client(server, tmp_path, concurrency=1).map([chat(str(i)) for i in range(8)])
    assert server.count() == 1


def test_401_stops_the_run_with_a_clear_message_and_no_secret(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(server, tmp_path, api_key="sk-wrong-KEY-987654321", concurrency=1)
    with pytest.raises(LLMAuthError) as err:
        client.map([chat(str(i)) for i in range(6)])
    message = str(err.value)
    assert "OPENAI_API_KEY" in message and "Fix:" in message and "401" in message
    assert server.count() == 1  # the run stopped at the first refusal
    ledger_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))
    for secret in ("sk-wrong-KEY-987654321", KEY):
        assert secret not in message and secret not in caplog.text
        assert secret.encode() not in ledger_bytes
    row = client.ledger.entries()[0]
    assert row.status == "auth_error" and row.http_status == 401
    assert make_client(server, tmp_path).call(chat("0")).ok  # a fixed key: the call is sent again


def test_redaction_and_endpoint_sanitizing():
    assert redact("Incorrect API key provided: sk-abc123456. task-force ok", ["nope"]) == \
        "Incorrect API key provided: [REDACTED]. task-force ok"
    assert sanitize_url("https://user:pw@host.example:8443/v1/?api-key=zzz") == "https://host.example:8443/v1"


def test_sync_ledger_is_idempotent(server, tmp_path):
    from nx_dagster.storage import Catalog

    client = make_client(server, tmp_path)
    client.map([chat("a"), chat("b")])
    catalog = Catalog(tmp_path / "home")
    assert sync_ledger(catalog, client.ledger) == 2
    client.map([chat("c")])
    sync_ledger(catalog, client.ledger, keys=list(client.keys_used))  # all three, two already there
    rows = catalog.query("SELECT call_key, status, endpoint, request_json FROM llm_calls").to_pylist()
    assert len(rows) == 3 and len({r["call_key"] for r in rows}) == 3
    assert all(r["status"] == "ok" and KEY not in str(r) for r in rows)


def _run_and_kill(server: FakeLLMServer, ledger: Path, after: int) -> None:
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "NX_LLM_LEDGER": str(ledger),
           "PYTHONPATH": str(REPO)}
    script = ("from tests.llm_server import demo_neurons\n"
              "from nx_dagster.explain import *\n"
              "n = demo_neurons(10)\n"
              "simulate(pair_by_neuron(explain_neurons(n), n), 'json_logprobs', "
              "LLMClient(LLMSettings.from_env(concurrency=2)))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while server.count() < after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_run_resumes_with_exactly_the_missing_calls(tmp_path):
    neurons = demo_neurons(10)
    pairs = pair_by_neuron(explain_neurons(neurons), neurons)
    with FakeLLMServer(api_key=KEY, latency_s=0.03) as server:
        _run_and_kill(server, tmp_path / "ledger.sqlite", after=8)
        ledger = Ledger(tmp_path / "ledger.sqlite")
        answered, in_flight = ledger.count("ok"), ledger.count("pending")
        total = sum(len(n.select("valid")) + len(n.select("calibration")) for n in neurons)
        assert 0 < answered < total
        assert 1 <= in_flight <= 2  # the calls in flight at the kill (concurrency 2) are known: maybe paid
        server.reset()
        client = make_client(server, tmp_path, concurrency=4)
        resumed = simulate(pairs, "json_logprobs", client)
        assert server.count() == total - answered and client.stats.pending_resent == in_flight
        assert ledger.count() == ledger.count("ok") == total
        server.reset()
        fresh = simulate(pairs, "json_logprobs", make_client(server, tmp_path / "fresh", concurrency=4))
        assert server.count() == total
    assert simulations_table(resumed).equals(simulations_table(fresh))


def test_a_call_is_ledgered_pending_before_it_is_sent(server, tmp_path):
    import threading

    server.add_fault(Fault(delay_s=0.6))
    client = make_client(server, tmp_path)
    done = threading.Thread(target=client.call, args=(chat("slow"),))
    done.start()
    deadline = time.monotonic() + 5
    while server.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    (entry,) = Ledger(tmp_path / "ledger.sqlite").entries()  # the server has it; no answer yet
    assert entry.status == "pending" and entry.response_json is None
    done.join()
    assert [e.status for e in client.ledger.entries()] == ["ok"]
    assert client.ledger.summary()["pending"] == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/v1", "http://nx-no-such-host.invalid/v1"])
def test_an_unreachable_endpoint_stops_the_run_at_once_with_a_named_error(tmp_path, url):
    from nx_dagster.explain import LLMUnreachableError

    client = LLMClient(LLMSettings(api_key=KEY, base_url=url, concurrency=8, timeout_s=5, backoff_s=0.2),
                       Ledger(tmp_path / "ledger.sqlite"))
    t0 = time.monotonic()
    with pytest.raises(LLMUnreachableError) as err:
        client.map([chat(str(i)) for i in range(20)])
    assert time.monotonic() - t0 < 10  # not the minutes of a full retry schedule
    message = str(err.value)
    assert "OPENAI_BASE_URL" in message and "cannot be reached" in message and "Fix:" in message
    assert KEY not in message
    assert client.stats.requests_sent <= 8 * 2  # at most connect_attempts per worker, then everything stops
    assert {e.status for e in client.ledger.entries()} <= {"transient"}  # nothing left pending


def test_a_connection_blip_after_the_endpoint_answered_is_retried(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = FakeLLMServer(api_key=KEY, port=port).start()
    client = LLMClient(LLMSettings(api_key=KEY, base_url=first.base_url, concurrency=1, timeout_s=5,
                                   max_attempts=6, backoff_s=0.3, max_backoff_s=0.6), Ledger(tmp_path / "l.sqlite"))
    assert client.call(chat("a")).ok
    first.stop()  # the endpoint goes away mid-run, and comes back a moment later
    client._client = None  # a fresh connection pool: the old keep-alive connection outlives the listener
    import threading

    second: list[FakeLLMServer] = []
    restart = threading.Timer(0.5, lambda: second.append(FakeLLMServer(api_key=KEY, port=port).start()))
    restart.start()
    try:
        result = client.call(chat("b"))
        assert result.ok and result.attempts >= 2 and second[0].count() == 1
    finally:
        restart.join()
        for s in second:
            s.stop()


def test_progress_is_reported_while_requests_run(server, tmp_path):
    server.latency_s = 0.02
    client = make_client(server, tmp_path, concurrency=4)
    lines: list[str] = []
    client.on_progress = lines.append
    client.map([chat(f"q{i}") for i in range(12)])
    assert lines and lines[-1].startswith("LLM requests: 12/12 (100%)") and "/s" in lines[-1]
    lines.clear()
    client.map([chat(f"q{i}") for i in range(12)])  # all answered from the ledger: nothing to report
    assert lines == []
