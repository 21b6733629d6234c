"""Keep secrets out of MLflow: params, tags and artifacts pass through here first.

A key is secret by its LAST name component: password, secret, credentials, auth,
api_key/access_key/..., and `*_token` unless it names a tokenizer role. So `sep_token`,
`pad_token`, `new_tokens.0.token`, `max_new_tokens`, `tokenizer`, `keywords` and
`api_key_env` (the NAME of a variable) stay readable, while `hf_token`, `access_token`,
`auth_token` and `api_token` are masked. A special-token value (<sep>, [PAD], <|eot_id|>)
is never a secret. Independently of keys, a value is masked wherever it appears when it
looks like a provider key (sk-..., hf_..., ghp_...), is the user:password part of a URL,
or is the value of a secret-named environment variable that is itself secret-like (long,
one word, not a path, mixed characters): a variable such as MUNGE_AUTH=runs or
GOOGLE_APPLICATION_CREDENTIALS=/home/u/gcp.json must not cut `***` into every path
that happens to contain its value.
"""
from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
_SECRET_LAST = {"apikey", "secret", "secrets", "password", "passwd", "pwd", "passphrase", "credential",
                "credentials", "creds", "auth", "authorization", "bearer", "cookie"}
# "<x>_key" is a secret only for these x: `text_key`, `sort_key` are data settings.
_SECRET_KEY_PREFIX = {"api", "access", "secret", "private", "client", "service", "signing", "encryption",
                      "master", "ssh", "auth", "openai", "anthropic", "hf", "aws", "license", "subscription"}
# "<x>_token" names a tokenizer setting for these x; any other x_token (hf, access, api) is a secret.
_TOKEN_ROLES = {"sep", "pad", "bos", "eos", "unk", "cls", "mask", "start", "end", "special", "new", "chat",
                "eot", "eom", "im", "think", "tool", "image", "audio", "video", "prefix", "suffix", "middle",
                "fim", "system", "user", "assistant", "added", "additional", "placeholder", "boundary", "split"}
# Lists whose items' `token` field is a vocabulary entry, not a credential.
_TOKEN_LISTS = {"new_tokens", "special_tokens", "additional_special_tokens", "added_tokens"}
_COMPONENTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SPECIAL_TOKEN = re.compile(r"^(<\|?[^<>\s]{1,40}\|?>|\[[A-Za-z_]{1,20}\])$")
_URL_CREDS = re.compile(r"(\w[\w+.-]*://)([^/@\s:]+)(:[^/@\s]*)?@")
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{8,}|github_pat_\w{8,}"
                       r"|xox[abprs]-[A-Za-z0-9-]{8,}|AKIA[0-9A-Z]{16})")
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# `api_key: abc`, `"password": "abc"`, `HF_TOKEN=abc` inside free text (YAML, logs, JSON).
_KEY_VALUE = re.compile(r"""(?P<key>\b[\w-]*(?:key|secrets?|password|passwd|pwd|passphrase|token|credentials?"""
                        r"""|creds|auth|authorization|cookie))(?P<sep>["']?\s*[:=]\s*)(?P<q>["']?)"""
                        r"""(?P<val>[^\s"',}\]]+)""", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    parts = [p.lower() for p in _COMPONENTS.findall(str(key))]
    if not parts:
        return False
    last, prev = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if last == "key":
        return prev in _SECRET_KEY_PREFIX
    if last == "token":
        return prev not in _TOKEN_ROLES
    return last in _SECRET_LAST


def secret_like(value: str) -> bool:
    """Long, one word, not a path or URL, and mixing character classes as generated keys
    and passwords do: only such a value is safe to replace wherever it appears."""
    if len(value) < 12 or any(c.isspace() for c in value) or value.startswith(("/", "~", ".")) or "://" in value:
        return False
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                   any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))
    return classes >= 3 or (classes == 2 and len(value) >= 20)


def env_secrets() -> list[str]:
    return sorted((v for k, v in os.environ.items() if is_secret_key(k) and secret_like(v)),
                  key=len, reverse=True)


def _secret_value(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return False
    s = str(v).strip()
    return s.lower() not in ("", "null", "none", "true", "false", REDACTED) and not _SPECIAL_TOKEN.match(s)


def _mask_key_value(m: re.Match) -> str:
    if not (is_secret_key(m.group("key")) and _secret_value(m.group("val"))):
        return m.group(0)
    return f"{m.group('key')}{m.group('sep')}{m.group('q')}{REDACTED}"


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in env_secrets() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _KEY_VALUE.sub(_mask_key_value, text)
    return _KEY_LIKE.sub(REDACTED, text)


def redact(obj: Any, key: str = "", secrets: list[str] | None = None) -> Any:
    """A copy of obj with secret-named keys blanked and secret-looking values masked."""
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        vocab = key in _TOKEN_LISTS
        return {k: (REDACTED if not (vocab and k == "token") and is_secret_key(str(k)) and _secret_value(v)
                    else redact(v, str(k), secrets)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, key, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
