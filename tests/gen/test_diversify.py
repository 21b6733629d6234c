"""`delia data diversify` against a fault-injecting OpenAI-compatible server of our own:
429 with Retry-After, 500, a hung reply, malformed JSON, paraphrases that drop a
placeholder. HTTP failures are retried by the openai client, malformed replies by us.
Every case ends with valid paraphrases or a clear error; the cache is never torn; a
rerun sends zero requests; the API key never shows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from delia_dist.config import DiversifyConfig
from delia_dist.errors import UserError
from delia_dist.gen.diversify import Diversifier
from delia_dist.gen.validate import markers

INSTRUCTION = "Translate the following Fenish text into English. Use the <sep> format.\n{source}"
GOOD = [
    "Please render {source} in English, keeping to the <sep> format.",
    "English translation of this Fenish passage, <sep> format only: {source}",
    "{source}\nWhat does the text above say in English? Answer following <sep>.",
    "Act as a careful translator. Convert the Fenish below into plain English and obey <sep>.\n{source}",
    "Give me the English for the following (format: <sep>). Text: {source}",
    "Translate into English -- short and faithful, formatted as <sep>: {source}",
]


class FaultServer:
    """Answers /v1/chat/completions from a script of behaviours, then with valid replies."""

    def __init__(self, script):
        self.script, self.requests, self.good_served = list(script), 0, 0
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests += 1
                outer.times.append(time.monotonic())
                action = outer.script.pop(0) if outer.script else ("valid", 3)
                kind = action[0]
                if kind == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": str(action[1])})
                if kind == "429date":  # Retry-After as an HTTP date (RFC 9110), here already past
                    return self._send(429, {"error": {"message": "slow down"}},
                                      {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
                if kind == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if kind == "hang":
                    time.sleep(action[1])
                    return self._send(200, outer.completion(["late"]))
                if kind == "malformed":
                    body = b'{"id": "x", "choices": [ {"message": '
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if kind == "drop":
                    return self._send(200, outer.completion(["Translate this text into English.", outer.next_good()]))
                return self._send(200, outer.completion([outer.next_good() for _ in range(action[1])]))

            def _send(self, code, payload, headers=None):
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next_good(self) -> str:
        text = GOOD[self.good_served % len(GOOD)]
        self.good_served += 1
        return text

    @staticmethod
    def completion(items):
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": json.dumps(items)}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}}

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server_factory():
    servers = []

    def make(script):
        servers.append(FaultServer(script))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def cfg(url, **kw):
    base = dict(base_url=url, model="m", k=3, max_retries=5, timeout_s=0.5, max_concurrency=1, max_similarity=0.9)
    return DiversifyConfig(**{**base, **kw})


def test_every_fault_ends_with_valid_paraphrases_and_rerun_is_free(server_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv = server_factory([("429", 0.2), ("500",), ("hang", 1.5), ("malformed",), ("drop",)])
    div = Diversifier(cfg(srv.url), tmp_path / "cache")
    t0 = time.monotonic()
    out = div.run([INSTRUCTION])
    paraphrases = out[0]["paraphrases"]
    assert len(paraphrases) == 3 and len(set(paraphrases)) == 3
    assert all(markers(p) == markers(INSTRUCTION) for p in paraphrases)
    assert div.stats.retries == 4 and div.stats.rejected["placeholders"] == 1
    assert time.monotonic() - t0 >= 0.2  # Retry-After honoured
    first = srv.requests
    assert first == 6  # 429, 500, hang, malformed, drop (1 good of 2), then 2 more good
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert not f.name.startswith(".tmp-")
            json.loads(f.read_text())  # never torn
    again = Diversifier(cfg(srv.url), tmp_path / "cache").run([INSTRUCTION])
    assert again == out and srv.requests == first  # zero new requests


def test_persistent_server_errors_give_a_clear_error(server_factory, tmp_path):
    srv = server_factory([("500",)] * 10)
    with pytest.raises(UserError, match=r"kept failing after 3 attempts .*HTTP 500"):
        Diversifier(cfg(srv.url, max_retries=2), tmp_path / "c").run([INSTRUCTION])
    assert srv.requests == 3


def test_paraphrases_that_always_drop_placeholders_give_a_clear_error(server_factory, tmp_path):
    srv = server_factory([("drop",)] * 0)
    srv.script = [("valid", 0)] * 0
    srv.next_good = lambda: "Translate the text to English please."  # never keeps {source}/<sep>
    with pytest.raises(UserError, match=r"only 0 of 3 valid paraphrases after 4 rounds .*placeholders"):
        Diversifier(cfg(srv.url), tmp_path / "c").run([INSTRUCTION])


def test_cli_writes_paraphrases_and_never_prints_the_key(server_factory, tmp_path):
    srv = server_factory([("429", 0.1)])
    inst = tmp_path / "tasks.jsonl"
    inst.write_text(json.dumps({"instruction": INSTRUCTION, "fields": {"source": "a"}, "response": "b"}) + "\n"
                    + json.dumps({"instruction": INSTRUCTION, "fields": {"source": "c"}, "response": "d"}) + "\n")
    out = tmp_path / "para.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-SECRET-123456789"}
    cmd = [sys.executable, "-m", "delia_dist.cli", "data", "diversify", str(inst), "--out", str(out),
           "--base-url", srv.url, "-k", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["original"] == INSTRUCTION and len(rows[0]["paraphrases"]) == 2
    assert "est. cost $" in proc.stdout and "SECRET" not in proc.stdout + proc.stderr
    proc2 = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc2.returncode == 0 and "requests 0 (cached 1" in proc2.stdout
    bad = subprocess.run([sys.executable, "-m", "delia_dist.cli", "data", "diversify", str(tmp_path / "none.jsonl"),
                          "--out", str(out)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "instructions file not found" in bad.stderr


def test_retry_after_http_date_is_honoured_not_a_crash(server_factory, tmp_path):
    srv = server_factory([("429date",), ("429date",)])
    out = Diversifier(cfg(srv.url), tmp_path / "c").run([INSTRUCTION])
    assert len(out[0]["paraphrases"]) == 3 and srv.requests == 3


def test_429_waits_for_retry_after_then_succeeds(server_factory, tmp_path):
    """The client's own retry honours the server's Retry-After (longer than its 0.5 s backoff)."""
    srv = server_factory([("429", 1.5)])
    div = Diversifier(cfg(srv.url, timeout_s=5), tmp_path / "c")
    out = div.run([INSTRUCTION])
    assert len(out[0]["paraphrases"]) == 3 and srv.requests == 2
    assert srv.times[1] - srv.times[0] >= 1.4
    assert div.stats.requests == 2 and div.stats.retries == 1


def test_malformed_replies_are_asked_again_then_a_clear_error(server_factory, tmp_path):
    """The client does not retry a 200 it cannot parse; we ask again max_retries times, then stop."""
    srv = server_factory([("malformed",)] * 10)
    div = Diversifier(cfg(srv.url, max_retries=2), tmp_path / "c")
    with pytest.raises(UserError, match=r"sent 3 malformed replies in a row"):
        div.run([INSTRUCTION])
    assert srv.requests == 3 and div.stats.requests == 3
    assert not [f for f in (tmp_path / "c").rglob("*") if f.is_file()]  # nothing cached from garbage


def test_concurrency_is_bounded_and_every_instruction_is_answered(tmp_path):
    """max_concurrency requests at most in flight; results come back in input order."""
    lock, state = threading.Lock(), {"now": 0, "peak": 0, "n": 0}

    class Client:
        class chat:
            class completions:
                @staticmethod
                def create(**request):
                    with lock:
                        state["now"] += 1
                        state["peak"] = max(state["peak"], state["now"])
                        state["n"] += 1
                    time.sleep(0.05)
                    with lock:
                        state["now"] -= 1
                    items = ["Please handle the following: {source}",
                             "{source}\nWhat should be done with the text above? Answer in full sentences.",
                             "Kindly take a careful look at this input and act on it step by step -> {source}"]
                    from types import SimpleNamespace as NS
                    return NS(choices=[NS(message=NS(content=json.dumps(items)))],
                              usage=NS(prompt_tokens=10, completion_tokens=20))

    insts = [f"Task number {i}: {{source}}" for i in range(8)]
    div = Diversifier(cfg(None, max_concurrency=3), tmp_path / "c", client=Client())
    out = div.run(insts)
    assert [r["original"] for r in out] == insts and all(len(r["paraphrases"]) == 3 for r in out)
    assert state["n"] == 8 and 1 < state["peak"] <= 3
    assert div.stats.prompt_tokens == 80 and div.stats.completion_tokens == 160


@pytest.mark.parametrize("args, message", [
    (["-k", "0"], "generate.diversify.k: must be >= 1"),
    (["--set", "generate.diversify.max_similarity=0"], "max_similarity: must be in (0, 1]"),
    (["--set", "generate.diversify.max_rounds=0"], "max_rounds: must be >= 1"),
])
def test_bad_settings_are_named(tmp_path, args, message):
    inst = tmp_path / "tasks.jsonl"
    inst.write_text(json.dumps({"instruction": INSTRUCTION}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "data", "diversify", str(inst), "--out",
                           str(tmp_path / "p.jsonl"), "--base-url", "http://127.0.0.1:9/v1", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
