"""Keep credentials out of MLflow params, tags, artifacts and logs.

URIs may carry them (``s3://KEY:SECRET@bucket``, ``https://user:password@host``, signed query
strings); those parts are replaced by ``***`` wherever a config value or URI leaves the process.
Environment variables are never logged in the first place.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s@]+@")  # userinfo, even with an unescaped /
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&](?:[^=&\s]*(?:secret|token|password|passwd|signature|credential|key)[^=&\s]*))=[^&\s]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``s3://AKIA:secret@bucket/x?X-Amz-Signature=abc`` -> ``s3://***@bucket/x?X-Amz-Signature=***``."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "=***", text)


def redact_values(data: Any) -> Any:
    """``redact`` applied to every string in a (nested) dict / list."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: redact_values(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_values(v) for v in data]
    return data
