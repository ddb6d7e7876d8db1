"""Keep secrets out of logs: a logging filter that masks anything shaped like a Hub token or an API key.

Secrets are never passed to log calls on purpose; this is the net under that rule, for text that comes
from a library (an exception message quoting a header, a URL with a token in it)."""

from __future__ import annotations

import logging
import re

# Hugging Face tokens (hf_..., api_org_...), our API keys (mlxcr_...), and any Bearer header value.
SECRET_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"\bapi_org_[A-Za-z0-9]{8,}"),
    re.compile(r"\bmlxcr_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.=]{8,}"),
]


def redact(text: str) -> str:
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters render the traceback from exc_info; pre-render it redacted instead.
            formatted = logging.Formatter().formatException(record.exc_info)
            cleaned = f"{cleaned}\n{redact(formatted)}"
            record.exc_info = None
            record.exc_text = None
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True
