"""Image fixtures: the classifier is converted once per session and registered per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.imagenet import ConvertedClassifier
from modelport.settings import Settings
from tests.images.support import built_in_classifier, register_classifier, serve


@pytest.fixture(scope="session")
def classifier() -> ConvertedClassifier:
    return built_in_classifier()


@pytest.fixture
def image_settings(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> Settings:
    settings = make_settings(job_poll_seconds=0.1)
    register_classifier(settings, classifier)
    return settings


@pytest.fixture
def image_client(image_settings: Settings) -> Iterator[TestClient]:
    """The app with imagenet-classifier registered, loaded and its job runner running."""
    with serve(image_settings) as client:
        yield client
