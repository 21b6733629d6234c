"""One answer to "is this a URL or a local path?" for config checks and the data readers."""
from __future__ import annotations


def is_url(spec: str) -> bool:
    """True for what webdataset's gopen opens remotely (scheme://... or pipe:CMD): such a
    value is never checked for existence on the local filesystem."""
    return "://" in spec or spec.startswith("pipe:")
