"""Secrets out of URLs before a URL is shown or logged.

A URL may carry credentials in its userinfo (`http://user:PASS@host`) or its query
(`?token=…`, `?api_key=…`). `redact_url` masks both in one URL; `redact_text` masks them in any
text that contains URLs (log values, error details). Both are idempotent.
"""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s]+@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&#\s]*(?:key|token|secret|passw|pwd|auth|sig|credential|session)[^=&#\s]*=)"
    r"[^&#\s]*"
)


def redact_text(text: str) -> str:
    """`text` with the userinfo and secret-looking query values of every URL in it masked."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAM.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>{MASK}@", text))


def redact_url(url: object) -> str:
    """One URL, as text safe to show: userinfo and secret query values masked."""
    return redact_text(str(url))
