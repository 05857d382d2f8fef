"""Shared pytest configuration."""

import os
import sys

import pytest

SPEC_DIR = os.environ.get(
    "ALBATROSS_SPEC_DIR",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "spec"),
)
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture
def spec_dir():
    return SPEC_DIR
