"""FastAPI provider for the registry manager the app factory puts on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.registry.management import RegistryManager


def get_registry_manager(request: Request) -> RegistryManager:
    manager: RegistryManager = request.app.state.registry_manager
    return manager


ManagerDep = Annotated[RegistryManager, Depends(get_registry_manager)]
