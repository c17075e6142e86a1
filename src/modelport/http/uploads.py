"""Read a multipart upload: one file in the field ``file`` plus plain form fields.

Upload routes declare no ``File``/``Form`` parameters: FastAPI would parse the whole body before
any dependency runs. Their handlers check the caller first and then call ``read_upload``, which
is also the only place a request's body limit is raised from the JSON limit to an upload limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from modelport.errors import InvalidInputError
from modelport.http.middleware import BodyTooLargeError, UploadKind, body_limit_of

FormT = TypeVar("FormT", bound=BaseModel)


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def read_upload(
    request: Request, what: str, kind: UploadKind = "file", max_fields: int = 20
) -> Upload:
    """The file and the other fields, within the upload limit of ``kind`` (``model`` files
    have their own); call it only once the caller is known to be allowed to upload."""
    limit = body_limit_of(request.scope)
    if limit is not None:
        allowed = limit.allow_upload(kind)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > allowed:
            raise BodyTooLargeError(allowed)
    async with request.form(max_files=1, max_fields=max_fields) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInputError(
                f"send the {what} as a file in the multipart field 'file'",
                [{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}],
            )
        fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        return Upload(data=await upload.read(), filename=upload.filename, fields=fields)


def form_fields(model: type[FormT], upload: Upload) -> FormT:
    """The upload's plain fields checked by ``model``; errors are the usual 422, located in the
    body. An empty field counts as absent, as it did for FastAPI's own form parameters."""
    values = {name: value for name, value in upload.fields.items() if value != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def multipart_body(
    file_description: str,
    fields: dict[str, dict[str, Any]] | None = None,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``openapi_extra`` documenting a multipart body (the route reads it itself), so the
    interactive docs still offer a file picker and the form fields."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": file_description}
    }
    properties.update(fields or {})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": properties,
                        "required": ["file", *required],
                    }
                }
            },
        }
    }
