"""Upload a photo, read what it shows, correct or delete the result."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from modelport.auth.dependencies import Predictor, Reader, SignedInReader, get_principal, priced
from modelport.auth.principal import Principal
from modelport.http.uploads import read_upload
from modelport.images.dependencies import ImageServiceDep
from modelport.images.schemas import (
    CorrectionIn,
    CorrectionOut,
    ImageAcceptedOut,
    ImagePredictionOut,
    ImagePredictionPageOut,
    ImageStatus,
)
from modelport.images.tables import ImagePrediction

router = APIRouter(prefix="/api/v1/images/predictions", tags=["images"])
AnyCaller = Annotated[Principal, Depends(get_principal)]
DeleteToken = Annotated[
    str | None,
    Header(
        alias="X-Delete-Token",
        max_length=128,
        description="The delete_token returned when an anonymous upload was made",
    ),
]
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG, WebP, GIF, BMP or TIFF",
                        }
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


def present(record: ImagePrediction) -> ImagePredictionOut:
    correction = None
    if record.corrected_label is not None and record.corrected_at is not None:
        correction = CorrectionOut(
            label=record.corrected_label,
            confidence=record.corrected_confidence
            if record.corrected_confidence is not None
            else 1.0,
            corrected_by=record.corrected_by,
            corrected_at=record.corrected_at,
        )
    return ImagePredictionOut.model_validate(record).model_copy(update={"correction": correction})


@router.post(
    "",
    response_model=ImageAcceptedOut,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a photo to classify in the background",
    responses={
        400: {"description": "Not an image, damaged, or far too many pixels"},
        413: {"description": "File larger than MODELPORT_MAX_UPLOAD_BYTES"},
        422: {"description": "No file in the multipart field 'file'"},
    },
    dependencies=[priced("upload")],
    openapi_extra=_UPLOAD_BODY,
)
async def upload(
    request: Request, response: Response, caller: Predictor, images: ImageServiceDep
) -> ImageAcceptedOut:
    # The form is read here, not by FastAPI's File(), which would read it before the caller
    # is checked (and turn an upload streamed past its limit into a 400 instead of a 413).
    upload = await read_upload(request, "image")
    record, delete_token = await images.accept(caller, upload.filename, upload.data)
    if delete_token is not None:
        response.headers["Cache-Control"] = "no-store"  # the token is shown once
    return ImageAcceptedOut(
        id=record.id,
        filename=record.filename,
        status="pending",
        job_id=record.job_id,
        delete_token=delete_token,
    )


@router.get("", response_model=ImagePredictionPageOut, summary="Your image predictions")
async def list_images(
    viewer: SignedInReader,
    images: ImageServiceDep,
    status_filter: Annotated[ImageStatus | None, Query(alias="status")] = None,
    label: Annotated[str | None, Query(max_length=128)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ImagePredictionPageOut:
    records, total = await images.list(
        viewer, status=status_filter, label=label, offset=offset, limit=limit
    )
    return ImagePredictionPageOut(
        items=[present(r) for r in records], total=total, offset=offset, limit=limit
    )


@router.get("/{image_id}", response_model=ImagePredictionOut, summary="One image's result")
async def get_image(
    image_id: uuid.UUID, caller: Reader, images: ImageServiceDep
) -> ImagePredictionOut:
    return present(await images.get(caller, image_id))


@router.put("/{image_id}", response_model=ImagePredictionOut, summary="Record a human correction")
async def correct_image(
    image_id: uuid.UUID,
    body: CorrectionIn,
    caller: AnyCaller,
    images: ImageServiceDep,
    delete_token: DeleteToken = None,
) -> ImagePredictionOut:
    """The owner or an administrator (an API key needs 'manage'); for an anonymous upload,
    whoever holds its delete token."""
    record = await images.correct(caller, image_id, body.label, body.confidence, delete_token)
    return present(record)


@router.delete(
    "/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete the result and the stored image",
)
async def delete_image(
    image_id: uuid.UUID,
    caller: AnyCaller,
    images: ImageServiceDep,
    delete_token: DeleteToken = None,
) -> Response:
    """The owner or an administrator (an API key needs 'manage'); for an anonymous upload,
    whoever holds its delete token."""
    await images.delete(caller, image_id, delete_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
