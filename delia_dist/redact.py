"""Keep secrets out of MLflow: params, tags and artifacts pass through here first."""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
_SECRET_KEY = re.compile(r"(^|[._-])(api[_-]?key|secret|password|passwd|token|access[_-]?key|auth|credentials?)$",
                         re.IGNORECASE)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_URL_CREDS = re.compile(r"(\w+://)([^/@\s:]+)(:[^/@\s]*)?@")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|ghp_[A-Za-z0-9]{8,})")


def _env_secrets() -> list[str]:
    return sorted((v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6),
                  key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in _env_secrets() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _KEY_LIKE.sub(REDACTED, text)


def redact(obj: Any, key: str = "", secrets: list[str] | None = None) -> Any:
    """A copy of obj with secret-named keys blanked and secret-looking values masked."""
    secrets = _env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else
                    redact(v, str(k), secrets)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, key, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
