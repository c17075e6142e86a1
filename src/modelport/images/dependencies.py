"""FastAPI provider for the image service the app factory puts on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.images.service import ImageService


async def get_image_service(request: Request) -> ImageService:
    images: ImageService = request.app.state.images
    return images


ImageServiceDep = Annotated[ImageService, Depends(get_image_service)]
