"""Anisotropic instruction diversification through any OpenAI-compatible chat endpoint.

For each task instruction we ask for K paraphrases that vary wording, structure, length
and register but keep the meaning and every placeholder/special token; invalid ones are
dropped (counted by reason) and the missing number is asked for again, for a bounded
number of rounds. Every response is cached by request, so a rerun costs zero requests,
and requests are retried with backoff on 429 (honouring Retry-After), 5xx, timeouts and
malformed replies.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
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
    return f"Write {n} different paraphrases of this instruction.\nMust keep exactly: {keep}\n\nInstruction:\n{instruction}"


@dataclass
class Stats:
    requests: int = 0
    cached: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejected: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] += 1


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (RFC 9110: delay-seconds or an HTTP date); None if absent or
    unreadable, so the caller falls back to its own backoff. Capped: a server asking for
    hours should not park a worker silently."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), 300.0)


class TransientError(Exception):
    """A reply worth retrying: rate limit, server error, timeout, malformed body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Diversifier:
    def __init__(self, cfg, cache_dir: str | os.PathLike, client=None):
        self.cfg, self.max_rounds = cfg, cfg.max_rounds
        self.cache = ResponseCache(cache_dir)
        self.stats = Stats()
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI
            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                local = self.cfg.base_url and any(h in self.cfg.base_url for h in ("127.0.0.1", "localhost", "[::1]"))
                if not local:
                    raise UserError(f"set the API key in ${self.cfg.api_key_env} (it is read from the environment only)")
                key = "EMPTY"  # local OpenAI-compatible servers accept any key
            self._client = OpenAI(api_key=key, base_url=self.cfg.base_url, timeout=self.cfg.timeout_s, max_retries=0)
        return self._client

    def _complete(self, request: dict) -> dict:
        """One request with retries; returns {"content", "prompt_tokens", "completion_tokens"}."""
        import openai
        delay = 1.0
        last = None
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(**request)
                self.stats.add(requests=1)
                content = resp.choices[0].message.content if resp.choices else None
                if not isinstance(content, str):
                    raise TransientError("reply has no message content")
                usage = getattr(resp, "usage", None)
                return {"content": content, "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
            except openai.RateLimitError as e:
                self.stats.add(requests=1)
                header = e.response.headers.get("retry-after") if e.response is not None else None
                last = TransientError("429 rate limited", retry_after_seconds(header))
            except openai.APIStatusError as e:
                self.stats.add(requests=1)
                if e.status_code < 500:
                    raise UserError(f"endpoint refused the request ({e.status_code}): {str(e)[:200]}") from None
                last = TransientError(f"server error {e.status_code}")
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                self.stats.add(requests=1)
                last = TransientError(type(e).__name__)
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError,
                    TransientError) as e:
                last = e if isinstance(e, TransientError) else TransientError(f"malformed reply: {e}")
            if attempt == self.cfg.max_retries:
                break
            wait = last.retry_after if last.retry_after is not None else delay * (1 + random.random() * 0.25)
            log.info("retrying after %s in %.1f s", last, wait)
            self.stats.add(retries=1)
            time.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise UserError(f"endpoint {self.cfg.base_url or 'OpenAI'} kept failing after "
                        f"{self.cfg.max_retries + 1} attempts: {last}")

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
