"""Read a multipart upload: one file in the field ``file`` plus plain form fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.datastructures import UploadFile
from starlette.requests import Request

from modelport.errors import InvalidInputError


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def read_upload(request: Request, what: str, max_fields: int = 20) -> Upload:
    """The file (size already bounded by the request middleware) and the other fields."""
    async with request.form(max_files=1, max_fields=max_fields) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInputError(
                f"send the {what} as a file in the multipart field 'file'",
                [{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}],
            )
        fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        return Upload(data=await upload.read(), filename=upload.filename, fields=fields)
