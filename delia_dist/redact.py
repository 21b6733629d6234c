"""Keep secrets out of MLflow: params, tags and artifacts pass through here first.

A key is secret when its LAST name component is a secret word (api_key, hf_token,
db.password, openaiKey), so `tokenizer`, `max_new_tokens`, `keywords` and
`api_key_env` (the NAME of a variable) stay readable. A value is masked wherever it
appears when it is the value of a secret-named environment variable, looks like a
provider key (sk-..., hf_..., ghp_...), or is the user:password part of a URL.
"""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential",
                 "credentials", "auth", "authorization", "bearer", "cookie"}
_COMPONENTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A special token such as <sep>, <|eot_id|> or [SEP] is configuration, never a secret.
_SPECIAL_TOKEN = re.compile(r"^(<\|?[^<>\s]{1,40}\|?>|\[[A-Za-z_]{1,20}\])$")
_URL_CREDS = re.compile(r"(\w[\w+.-]*://)([^/@\s:]+)(:[^/@\s]*)?@")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{8,}|github_pat_\w{8,}"
                       r"|xox[abprs]-[A-Za-z0-9-]{8,}|AKIA[0-9A-Z]{16})")
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# `api_key: abc`, `"password": "abc"`, `HF_TOKEN=abc` inside free text (YAML, logs, JSON).
_KEY_VALUE = re.compile(r"""(\b[\w-]*(?:api[_-]?key|secret|password|passwd|token|credentials?)["']?\s*[:=]\s*)"""
                        r"""(["']?)([^\s"',}\]]+)""", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    parts = _COMPONENTS.findall(str(key))
    if not parts:
        return False
    last = parts[-1].lower()
    return last in _SECRET_WORDS or (len(parts) > 1 and parts[-2].lower() == "api" and last == "key")


def _env_secrets() -> list[str]:
    return sorted((v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= 6),
                  key=len, reverse=True)


def _mask_key_value(m: re.Match) -> str:
    value = m.group(3)
    if _SPECIAL_TOKEN.match(value) or value == REDACTED or value.lower() in ("null", "none", "true", "false"):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{REDACTED}"


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in _env_secrets() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _KEY_VALUE.sub(_mask_key_value, text)
    return _KEY_LIKE.sub(REDACTED, text)


def _secret_value(v: Any) -> bool:
    if v in (None, "") or isinstance(v, bool):
        return False
    return not (isinstance(v, str) and _SPECIAL_TOKEN.match(v))


def redact(obj: Any, key: str = "", secrets: list[str] | None = None) -> Any:
    """A copy of obj with secret-named keys blanked and secret-looking values masked."""
    secrets = _env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and _secret_value(v) else redact(v, str(k), secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, key, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
