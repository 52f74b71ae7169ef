"""Lambda's advanced logging controls and the LogLevel parameter (gateway.observability).

Powertools prefers ``AWS_LAMBDA_LOG_LEVEL`` to ``POWERTOOLS_LOG_LEVEL``; template.yaml caps
Lambda's level at INFO (EMF records have no "level" key and would be dropped above it), so a
stricter LogLevel must still reach the logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway import observability


@pytest.fixture
def restore_level() -> Iterator[None]:
    before = logging.getLogger(observability.logger.name).level
    logging.getLogger(observability.logger.name).setLevel(logging.INFO)
    yield
    logging.getLogger(observability.logger.name).setLevel(before)


@pytest.mark.parametrize(("wanted", "level"), [("WARNING", logging.WARNING), ("ERROR", logging.ERROR),
                                               ("INFO", logging.INFO), ("DEBUG", logging.INFO)])
def test_a_stricter_log_level_wins_over_lambdas_info(restore_level: None, wanted: str, level: int) -> None:
    # DEBUG: Lambda's level is DEBUG too (the template maps it); here Lambda says INFO and wins
    observability.apply_stricter_log_level({"AWS_LAMBDA_LOG_LEVEL": "INFO", "POWERTOOLS_LOG_LEVEL": wanted})
    assert observability.logger.log_level == level


def test_without_lambdas_log_level_nothing_changes(restore_level: None) -> None:
    observability.apply_stricter_log_level({"POWERTOOLS_LOG_LEVEL": "ERROR"})
    assert observability.logger.log_level == logging.INFO


def test_a_warning_level_drops_info_lines_but_not_warnings(restore_level: None) -> None:
    observability.apply_stricter_log_level({"AWS_LAMBDA_LOG_LEVEL": "INFO", "LOG_LEVEL": "warning"})
    assert not observability.logger.isEnabledFor(logging.INFO)
    assert observability.logger.isEnabledFor(logging.WARNING)
