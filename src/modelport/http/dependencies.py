"""The process's settings as a FastAPI dependency (the app factory puts them on ``app.state``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
