"""FastAPI providers for the registry's shared parts the app factory puts on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.registry.events import RegistryChanges
from modelport.storage.protocol import ArtifactStore


def get_registry_changes(request: Request) -> RegistryChanges:
    changes: RegistryChanges = request.app.state.registry_changes
    return changes


def get_artifact_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


RegistryChangesDep = Annotated[RegistryChanges, Depends(get_registry_changes)]
ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
