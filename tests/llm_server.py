"""A local OpenAI-compatible HTTP server for tests and benchmarks (stdlib only, 127.0.0.1, ephemeral port).

It serves `POST /v1/chat/completions` and `POST /v1/completions` with a tiny deterministic "model":
a token fires (value 10) when its text, stripped and lower-cased, is a word of the neuron description,
else 0. Replies carry `logprobs` in the OpenAI shapes (chat `content[].top_logprobs`; completions
`tokens`/`top_logprobs`/`text_offset`, with `echo`). Explainer prompts are answered with the tokens shown
at value 10.

Faults are queued with `add_fault(Fault(...))` and consumed one per request, in order: an HTTP status
with headers (429 + Retry-After, 500, 401), a delay (a reply slower than the client's timeout), or a
replaced reply (malformed or truncated JSON, a refusal, a non-JSON body). Every request is counted on
arrival. `fault_rate` > 0 adds random faults: each request with no queued fault draws one, with that
probability, from `RANDOM_FAULTS` (a seeded generator: the same seed gives the same draws in the same
order), and `faults_injected` counts them.

Run it as a process for benchmarks: `python -m tests.llm_server --latency 0.1 --fault-rate 0.05` prints
its base URL; `GET /stats` returns the request and injected-fault counts and `POST /reset` clears them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_NUMBERED = re.compile(r"^(\d+)\t(.*)$", re.M)
_VALUED = re.compile(r"^(.*)\t(\d+)$", re.M)
_DESCRIPTION = re.compile(r"^Neuron description: (.*)$", re.M)
_PIECES = re.compile(r"\w+|\s|[^\w\s]")
_EXCERPT = re.compile(r"^Excerpt (\d+): (.*)$", re.M)
_MARKED = re.compile(r"<<(.*?)>>")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: 64 clients connect at once


@dataclass
class Fault:
    """One scripted reply. `path` limits it to one endpoint (e.g. '/v1/completions')."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content: str | None = None  # replaces the assistant's content (chat) or text (completions)
    finish_reason: str = "stop"
    refusal: str | None = None
    message: str = "scripted failure"
    path: str | None = None
    body: str | None = None  # a raw non-JSON body sent with `status` (e.g. a proxy's HTML error page)
    values: str | None = None  # simulation replies only: 'short' (one value missing) or 'range' (an 11)


# The kinds of bad reply a flaky endpoint sends, drawn at random under `fault_rate`.
RANDOM_FAULTS = (
    Fault(body="<html><body>502 Bad Gateway</body></html>"),
    Fault(values="short"),
    Fault(values="range"),
    Fault(refusal="I can't help with that."),
    Fault(status=500),
)


def fires(token: str, description: str) -> bool:
    word = token.strip().lower()
    return bool(word) and word in re.findall(r"\w+", description.lower())


def digit_distribution(value: int) -> dict[str, float]:
    """The fake model's top_logprobs for one value position."""
    probs = {"10": 0.7, "9": 0.2, "0": 0.1} if value == 10 else {"0": 0.9, "1": 0.1}
    return {k: math.log(v) for k, v in probs.items()}


def _top(dist: dict[str, float]) -> list[dict]:
    return [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in dist.items()]


class FakeLLMServer:
    """Start with `with FakeLLMServer() as s:`; point the client at `s.base_url`."""

    def __init__(self, api_key: str | None = None, latency_s: float = 0.0, reject_echo: bool = False,
                 port: int = 0, fault_rate: float = 0.0, seed: int = 0):
        self.api_key, self.latency_s, self.reject_echo = api_key, latency_s, reject_echo
        self.fault_rate, self.faults_injected, self._rng = fault_rate, 0, random.Random(seed)
        self.faults: deque[Fault] = deque()
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def add_fault(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for p, _ in self.requests if path is None or p == path)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.faults_injected = 0

    def start(self) -> "FakeLLMServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling -------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.path in (None, path):
                    del self.faults[i]
                    return f
            if self.fault_rate and self._rng.random() < self.fault_rate:
                self.faults_injected += 1
                return self._rng.choice(RANDOM_FAULTS)
        return None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # no Nagle: headers and body go out at once (no 40 ms delayed-ACK stalls)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._send(200, {"requests": server.count(), "faults_injected": server.faults_injected})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                path = self.path.split("?")[0]
                if path == "/reset":
                    server.reset()
                    return self._send(200, {"ok": True})
                with server._lock:
                    server.requests.append((path, body))
                fault = server._take_fault(path)
                time.sleep(server.latency_s + (fault.delay_s if fault else 0.0))
                given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if server.api_key is not None and given != server.api_key:
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {given}.",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                if fault and fault.body is not None:
                    data = fault.body.encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                if fault and fault.status != 200:
                    return self._send(fault.status, {"error": {"message": fault.message, "type": "server_error",
                                                               "code": None}}, fault.headers)
                if path.endswith("/chat/completions"):
                    return self._send(200, server.chat_reply(body, fault))
                if path.endswith("/completions"):
                    if server.reject_echo and body.get("echo"):
                        return self._send(400, {"error": {
                            "message": "echo is not supported with logprobs for this model",
                            "type": "invalid_request_error", "code": None}})
                    return self._send(200, server.completion_reply(body, fault))
                self._send(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

        return Handler

    # -- the fake model ---------------------------------------------------------------------------
    def chat_reply(self, body: dict, fault: Fault | None) -> dict:
        prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        described = (_DESCRIPTION.findall(prompt) or [None])[-1]
        pieces: list[tuple[str, dict[str, float] | None]] = []
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema in ("judge_answers", "intruder_answer"):  # a detection, fuzzing or intruder question
            pieces = judge_pieces(schema, described or "", [text for _, text in _EXCERPT.findall(prompt)])
        elif described:  # a simulation request
            tokens = [t for _, t in _NUMBERED.findall(prompt)]
            values = [10 if fires(t, described) else 0 for t in tokens]
            if fault and fault.values == "short":
                values = values[:-1]
            elif fault and fault.values == "range":
                values = [11 if v == 10 else v for v in values] if 10 in values else [11] + values[1:]
            pieces.append(('{"activations":[', None))
            for i, v in enumerate(values):
                pieces.append((str(v), digit_distribution(v)))
                if i < len(values) - 1:
                    pieces.append((",", None))
            pieces.append(("]}", None))
        else:  # an explanation request
            hot = [t for t, v in _VALUED.findall(prompt) if int(v) >= 10]
            names = list(dict.fromkeys(t.strip() for t in hot))[:3] or ["nothing"]
            pieces.append(("Explanation: the words " + ", ".join(names), None))
        text = "".join(p for p, _ in pieces)
        content = fault.content if fault and (fault.content is not None or fault.refusal) else text
        logprobs = None
        if body.get("logprobs") and content == text:
            logprobs = {"content": [{"token": p, "logprob": max(d.values()) if d else 0.0, "bytes": list(p.encode()),
                                     "top_logprobs": _top(d or {p: 0.0})} for p, d in pieces]}
        n = int(body.get("n") or 1)
        choices = [{"index": i, "finish_reason": fault.finish_reason if fault else "stop", "logprobs": logprobs,
                    "message": {"role": "assistant", "content": None if fault and fault.refusal else content,
                                "refusal": fault.refusal if fault else None}} for i in range(n)]
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"), "choices": choices,
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(pieces),
                          "total_tokens": len(prompt) // 4 + len(pieces)}}

    def completion_reply(self, body: dict, fault: Fault | None) -> dict:
        prompt = body["prompt"]
        description = (_DESCRIPTION.findall(prompt) or [""])[-1]
        pieces = _PIECES.findall(prompt)
        tokens, offsets, tops, lps, pos, prev = [], [], [], [], 0, ""
        for i, p in enumerate(pieces):
            top: dict[str, float] | None = None
            if p == "unknown" and prev == "\t":
                line_start = prompt.rfind("\n", 0, pos) + 1
                token = prompt[line_start:pos - 1]
                top = digit_distribution(10 if fires(token, description) else 0)
            elif i > 0:
                top = {p: -0.05}
            tokens.append(p)
            offsets.append(pos)
            tops.append(top)
            lps.append(None if i == 0 else -0.05)
            pos += len(p)
            prev = p
        text = fault.content if fault and fault.content is not None else (prompt if body.get("echo") else "")
        logprobs = {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "text": text, "finish_reason": fault.finish_reason if fault else "length",
                             "logprobs": logprobs if body.get("logprobs") is not None else None}],
                "usage": {"prompt_tokens": len(tokens), "completion_tokens": 0, "total_tokens": len(tokens)}}


def judge_pieces(schema: str, description: str, excerpts: list[str]) -> list[tuple[str, dict[str, float] | None]]:
    """The fake judge: detection says yes when a word of an excerpt is a word of the description; fuzzing
    (tokens marked <<...>>) when every marked token is; the intruder is the excerpt whose marked tokens are
    least alike the others' (the offline judge's rule)."""
    if schema == "intruder_answer":
        from nx_dagster.explain.judges import least_alike

        return [('{"intruder":' + str(least_alike([set(_MARKED.findall(e)) for e in excerpts]) + 1) + "}", None)]
    pieces: list[tuple[str, dict[str, float] | None]] = [('{"answers":[', None)]
    for i, e in enumerate(excerpts):
        marks = _MARKED.findall(e)
        yes = all(fires(m, description) for m in marks) if marks else \
            any(fires(w, description) for w in re.findall(r"\w+", e))
        pieces.append(("1" if yes else "0", {"1": math.log(0.8), "0": math.log(0.2)} if yes else
                       {"0": math.log(0.9), "1": math.log(0.1)}))
        if i < len(excerpts) - 1:
            pieces.append((",", None))
    pieces.append(("]}", None))
    return pieces


def demo_neurons(n_neurons: int, n_sequences: int = 4, length: int = 8, model: str = "demo",
                 gelu_variant: str = "post_fix"):
    """Deterministic NeuronRecords for server-driven tests: neuron i fires on the word `w{i}`."""
    from nx_dagster.explain.records import ActivationRecord, NeuronRecords

    out = []
    for n in range(n_neurons):
        records = []
        splits = ["train", "calibration", "valid", "test"]
        for r in range(n_sequences):
            tokens = [f" w{(n + r + j) % (n_neurons + 3)}" for j in range(length)]
            acts = [3.0 if t == f" w{n}" else 0.1 * ((j + r) % 3) for j, t in enumerate(tokens)]
            records.append(ActivationRecord(sequence_id=1000 * n + r, tokens=tokens, activations=acts,
                                            kind="top", split=splits[r % 4], rank=r))
            rt = [f" r{(n * 7 + r * 3 + j) % 11}" for j in range(length)]
            rt[r % length] = f" w{n}"
            records.append(ActivationRecord(sequence_id=1000 * n + 500 + r, tokens=rt,
                                            activations=[2.5 if t == f" w{n}" else 0.05 * j for j, t in enumerate(rt)],
                                            kind="random", split=splits[1 + r % 3], rank=r))
        out.append(NeuronRecords(model=model, gelu_variant=gelu_variant, layer=0, neuron=n, records=records))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of requests given a random fault")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    server = FakeLLMServer(latency_s=args.latency, port=args.port, fault_rate=args.fault_rate, seed=args.seed)
    print(server.base_url, flush=True)
    server._httpd.serve_forever()


if __name__ == "__main__":
    main()
