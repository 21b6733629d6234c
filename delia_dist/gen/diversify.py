"""Anisotropic instruction diversification through any OpenAI-compatible chat endpoint.

For each task instruction we ask for K paraphrases that vary wording, structure, length
and register but keep the meaning and every placeholder/special token; invalid ones are
dropped (counted by reason) and the missing number is asked for again, for a bounded
number of rounds. Every response is cached by request, so a rerun costs zero requests.
Connection errors, timeouts, 408/409/429 and 5xx are retried by the openai client itself
(`max_retries`, exponential backoff, Retry-After honoured); a reply that arrives but is
malformed is asked for again here, up to the same number of times.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .cache import ResponseCache, request_key
from .validate import markers, parse_candidates, rejection

log = logging.getLogger("delia.diversify")

SYSTEM = ("You rewrite task instructions for instruction tuning. Keep the meaning and the task exactly. "
          "Vary wording, sentence structure, length, tone and register as much as possible "
          "(terse, formal, casual, step-by-step, question form...). Copy every placeholder in curly "
          "braces and every special token in angle brackets exactly, the same number of times. "
          "Reply with a JSON list of strings and nothing else.")


def user_prompt(instruction: str, n: int) -> str:
    keep = ", ".join(sorted(markers(instruction))) or "none"
    return (f"Write {n} different paraphrases of this instruction.\nMust keep exactly: {keep}\n\n"
            f"Instruction:\n{instruction}")


@dataclass
class Stats:
    requests: int = 0        # HTTP requests sent, the openai client's own retries included
    answers: int = 0         # replies asked for (cache misses)
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejected: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def retries(self) -> int:
        """Requests beyond one per answer: the client's retries and our re-asks after malformed replies."""
        return max(self.requests - self.answers, 0)

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] += 1


class MalformedReply(Exception):
    """A 2xx reply without usable content: worth asking again."""


class Diversifier:
    def __init__(self, cfg, cache_dir: str | os.PathLike, client=None):
        self.cfg, self.max_rounds = cfg, cfg.max_rounds
        self.cache = ResponseCache(cache_dir)
        self.stats = Stats()
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from openai import DefaultHttpxClient, OpenAI
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                local = self.cfg.base_url and any(h in self.cfg.base_url for h in ("127.0.0.1", "localhost", "[::1]"))
                if not local:
                    raise UserError(f"set the API key in ${self.cfg.api_key_env} "
                                    "(it is read from the environment only)")
                key = "EMPTY"  # local OpenAI-compatible servers accept any key
            counted = DefaultHttpxClient(event_hooks={"request": [lambda _request: self.stats.add(requests=1)]})
            self._client = OpenAI(api_key=key, base_url=self.cfg.base_url, timeout=self.cfg.timeout_s,
                                  max_retries=self.cfg.max_retries, http_client=counted)
        return self._client

    def _complete(self, request: dict) -> dict:
        """One answer; returns {"content", "prompt_tokens", "completion_tokens"}."""
        import openai
        last: Exception | None = None
        self.stats.add(answers=1)
        for _ in range(self.cfg.max_retries + 1):  # malformed replies only
            try:
                resp = self.client.chat.completions.create(**request)
                content = resp.choices[0].message.content if resp.choices else None
                if not isinstance(content, str):
                    raise MalformedReply("reply has no message content")
                usage = getattr(resp, "usage", None)
                return {"content": content, "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409, 429):
                    raise UserError(f"endpoint refused the request ({e.status_code}): {str(e)[:200]}") from None
                raise self._gave_up(f"HTTP {e.status_code}") from None
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                raise self._gave_up(type(e).__name__) from None
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError,
                    MalformedReply) as e:
                last = e
                log.info("malformed reply (%s); asking again", str(e)[:200])
        raise UserError(f"endpoint {self.cfg.base_url or 'OpenAI'} sent {self.cfg.max_retries + 1} malformed "
                        f"replies in a row; last: {str(last)[:200]}")

    def _gave_up(self, what: str) -> UserError:
        return UserError(f"endpoint {self.cfg.base_url or 'OpenAI'} kept failing after {self.cfg.max_retries + 1} "
                         f"attempts (the openai client's retries with backoff): {what}")

    def ask(self, instruction: str, n: int, round_: int) -> list[str]:
        request = {"model": self.cfg.model, "temperature": self.cfg.temperature,
                   "messages": [{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": user_prompt(instruction, n)}]}
        # the round is part of the key: asking again must not return the cached reply
        key = request_key({**request, "round": round_})
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.add(cached=1)
        else:
            hit = self._complete(request)
            self.cache.put(key, hit)
            self.stats.add(prompt_tokens=hit["prompt_tokens"], completion_tokens=hit["completion_tokens"])
        return parse_candidates(hit["content"])

    def paraphrase(self, instruction: str) -> list[str]:
        accepted: list[str] = []
        mine: Counter = Counter()
        k = self.cfg.k
        for round_ in range(self.max_rounds):
            for cand in self.ask(instruction, k - len(accepted), round_):
                reason = rejection(cand, instruction, accepted, self.cfg.max_similarity)
                if reason:
                    mine[reason] += 1
                    self.stats.reject(reason)
                    log.debug("rejected (%s): %r", reason, cand[:120])
                elif len(accepted) < k:
                    accepted.append(cand.strip())
            if len(accepted) >= k:
                return accepted
        raise UserError(f"only {len(accepted)} of {k} valid paraphrases after {self.max_rounds} rounds for "
                        f"instruction {instruction[:80]!r}: {k - len(accepted)} missing (rejected: {dict(mine)})")

    def run(self, instructions: list[str]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            results = list(pool.map(self.paraphrase, instructions))
        return [{"original": i, "paraphrases": p} for i, p in zip(instructions, results)]


def read_instructions(path: str | os.PathLike) -> list[str]:
    """Unique instructions, in order, from JSONL downstream records or {"instruction"} lines."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"instructions file not found: {p}")
    seen: dict[str, None] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(f"{p}:{n}: invalid JSON ({e})") from None
        text = rec.get("instruction") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{p}:{n}: needs a string 'instruction'")
        seen.setdefault(text, None)
    if not seen:
        raise UserError(f"{p}: no instructions")
    return list(seen)


def estimated_cost(stats: Stats, prompt_per_1k: float, completion_per_1k: float) -> float:
    return stats.prompt_tokens / 1000 * prompt_per_1k + stats.completion_tokens / 1000 * completion_per_1k
