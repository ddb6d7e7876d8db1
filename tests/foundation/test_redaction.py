from __future__ import annotations

import logging

import pytest

from models_app.redaction import RedactSecretsFilter, redact

CANARY = "hf_CanaryToken1234567890abcdef"


@pytest.mark.parametrize(
    "text",
    [
        f"token={CANARY}",
        f"Authorization: Bearer {CANARY}",
        "authorization: bearer sk-something-long-enough",
        "key mlxcr_ab12cd34_secretsecretsecret",
        "org api_org_abcdefghijklmnop",
    ],
)
def test_it_masks_secret_shaped_text(text: str) -> None:
    cleaned = redact(text)
    assert "[redacted]" in cleaned
    for secret in (CANARY, "sk-something-long-enough", "secretsecretsecret", "abcdefghijklmnop"):
        assert secret not in cleaned


def test_it_leaves_ordinary_text_alone() -> None:
    assert redact("downloaded hf_hub 2.4 models--org--name") == "downloaded hf_hub 2.4 models--org--name"


def test_the_logging_filter_redacts_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactSecretsFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("calling hub with %s", CANARY)
            try:
                raise RuntimeError(f"401 for Bearer {CANARY}")
            except RuntimeError:
                logger.exception("download failed")
    finally:
        logger.filters.clear()
    assert CANARY not in caplog.text
    assert caplog.text.count("[redacted]") >= 2
