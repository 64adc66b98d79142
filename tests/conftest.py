"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch

import autopart


@pytest.fixture
def fresh_dynamo():
    """The test compiles with its own backend: forget Dynamo's caches and autopart's registry
    before and after it."""
    torch._dynamo.reset()
    autopart.reset()
    yield
    torch._dynamo.reset()
    autopart.reset()
