"""Structured logs are opt-in by setting and carry what a line is about."""

from __future__ import annotations

import json
import logging

import pytest

from shared.log_setup import configure_logging
from shared.settings import Settings


def test_json_lines_carry_listing_and_version_only_when_asked(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(Settings(log_format="json"))
        logging.getLogger("tagloop.test").warning("dead-lettering %s", "x", extra={"listing_id": "l-7",
                                                                                    "model_version": "2"})
        line = json.loads(capfd.readouterr().err.strip().splitlines()[-1])
        assert (line["msg"], line["listing_id"], line["model_version"]) == ("dead-lettering x", "l-7", "2")
        configure_logging(Settings())
        logging.getLogger("tagloop.test").warning("plain", extra={"listing_id": "l-7"})
        err = capfd.readouterr().err
        assert "WARNING tagloop.test plain" in err and not err.lstrip().startswith("{")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
