"""Job fixtures: the image classifier (converted once per process) for the durable-image tests."""

from __future__ import annotations

import pytest

from modelport.builtin.imagenet import ConvertedClassifier
from tests.images.support import built_in_classifier


@pytest.fixture(scope="session")
def classifier() -> ConvertedClassifier:
    return built_in_classifier()
