"""Accept image uploads, classify them (in a durable job or at once), keep and curate results."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.errors import (
    ArtifactIntegrityError,
    BadRequestError,
    ForbiddenError,
    ModelportError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from modelport.images.classifier import Classification, classify, classify_tensor
from modelport.images.decoding import inspect_image, read_image
from modelport.images.tables import ImagePrediction
from modelport.jobs import service as jobs
from modelport.jobs.runner import JobRunner, PermanentJobError
from modelport.jobs.tables import Job
from modelport.monitoring.metrics import count_prediction
from modelport.monitoring.prediction_log import LogEntry, PredictionLogWriter
from modelport.registry.service import VersionRef
from modelport.serving.model_cache import ModelCache
from modelport.serving.resolver import VersionResolver
from modelport.storage.protocol import ArtifactStore

CLASSIFY_JOB = "classify-image"
DEFAULT_IMAGE_MODEL = "imagenet-classifier"
# Refusals that are the caller's doing (not an image, too large, unreadable), logged as
# "invalid_input" like a tabular prediction's bad rows; anything else is an "error".
_CALLERS_INPUT = frozenset({400, 413, 422})
INTERNAL_ERROR = "internal error; the server log has the details under this request id"


def _display_name(filename: str | None) -> str:
    """The client's name, kept only as metadata: no path, no control characters, bounded."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in name if ch.isprintable() and ch != "\x00").strip()
    if cleaned in (".", ".."):
        cleaned = ""
    return (cleaned or "upload")[:255]


@dataclass
class ImageService:
    session_factory: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    resolver: VersionResolver
    models: ModelCache
    log: PredictionLogWriter
    runner: JobRunner
    max_pixels: int

    # --- uploads and the background job ---------------------------------------------------

    async def accept(
        self, caller: Principal, filename: str | None, data: bytes
    ) -> tuple[ImagePrediction, str | None]:
        """Check the bytes are an image, store them, and queue the classification in the same
        transaction as the record, so an accepted upload always gets classified. An anonymous
        upload also gets a delete token (returned once; only its SHA-256 is kept): with no
        owner, it is what lets the uploader correct or delete the record later."""
        if not data:
            raise BadRequestError("the uploaded file is empty")
        # A full decode (up to MODELPORT_MAX_IMAGE_PIXELS) and the file write: a worker thread.
        info = await anyio.to_thread.run_sync(inspect_image, data, self.max_pixels)
        stored = await anyio.to_thread.run_sync(self.store.put, data, info.suffix)
        async with self.session_factory() as session:
            record = ImagePrediction(
                owner_id=caller.user_id,
                client_address=caller.client_address[:64],
                filename=_display_name(filename),
                content_type=info.mime_type,
                width=info.width,
                height=info.height,
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
                artifact_uri=stored.uri,
                model_name=DEFAULT_IMAGE_MODEL,
            )
            delete_token = secrets.token_urlsafe(32) if caller.is_anonymous else None
            if delete_token is not None:
                record.delete_token_sha256 = _token_hash(delete_token)
            session.add(record)
            await session.flush()
            job = await jobs.enqueue(
                session, CLASSIFY_JOB, {"image_id": str(record.id)}, owner_id=caller.user_id
            )
            record.job_id = job.id
            await session.commit()
        self.runner.notify()
        return record, delete_token

    async def handle_job(self, job: Job) -> dict[str, Any]:
        image_id = uuid.UUID(job.payload["image_id"])
        async with self.session_factory() as session:
            record = await session.get(ImagePrediction, image_id)
            if record is None:
                return {"skipped": "the image was deleted before it was classified"}
            try:
                data = self._read_image(record)
                model = await self.models.get(await self._image_model(record.model_name))
                result = await classify(model, data, self.max_pixels)
            except (BadRequestError, NotFoundError, UnsupportedMediaTypeError) as exc:
                record.status, record.error = "failed", exc.message
                record.completed_at = datetime.now(UTC)
                await session.commit()
                raise PermanentJobError(exc.message) from exc
            _apply(record, result)
            await session.commit()
        self._log(f"job:{job.id}", result, record)
        return {"image_id": str(image_id), "top_prediction": result.top5[0]["label"]}

    def _read_image(self, record: ImagePrediction) -> bytes:
        # A stored image that was changed will not change back: no point retrying. One that
        # cannot be read right now (store away) is retried like any other failure.
        try:
            return self.store.open_verified(record.artifact_uri, record.sha256)
        except ArtifactIntegrityError as exc:
            raise BadRequestError(f"the stored image cannot be used: {exc.message}") from exc

    async def job_given_up(self, job: Job, error: str) -> None:
        """The job will never classify this image (attempts used up): say so on the record,
        instead of leaving it pending for ever."""
        async with self.session_factory() as session:
            record = await session.get(ImagePrediction, uuid.UUID(job.payload["image_id"]))
            if record is None or record.status != "pending":
                return
            record.status, record.error = "failed", error
            record.completed_at = datetime.now(UTC)
            await session.commit()

    async def _image_model(self, name: str) -> VersionRef:
        ref = await self.resolver.resolve(name, None, None)
        if not ref.signature.takes_image:
            raise UnsupportedMediaTypeError(f"model {name!r} does not take images")
        return ref

    # --- synchronous use ------------------------------------------------------------------

    async def classify_now(
        self,
        caller: Principal,
        name: str,
        data: bytes,
        request_id: str,
        version: int | None = None,
        alias: str | None = None,
    ) -> Classification:
        """Classify at once. Every call is logged and counted like a tabular prediction,
        failures too (an image that cannot be decoded, a model that fails), so the log and the
        metrics show what callers were answered, not only what went well."""
        started = time.perf_counter()
        ref: VersionRef | None = None
        inputs: dict[str, Any] = {"image": {"bytes": len(data)}}
        try:
            ref = await self.resolver.resolve_for(caller, name, version, alias)
            if not ref.signature.takes_image:
                raise UnsupportedMediaTypeError(
                    f"model {name!r} takes JSON rows, not an image upload"
                )
            if not data:
                raise BadRequestError("the uploaded file is empty")
            # One decode both checks the whole file and gives the model its tensor.
            info, tensor = await anyio.to_thread.run_sync(
                read_image, data, ref.details["preprocessing"], self.max_pixels
            )
            inputs["image"] = {
                "format": info.format,
                "width": info.width,
                "height": info.height,
                "bytes": len(data),
            }
            result = await classify_tensor(await self.models.get(ref), tensor, started)
        except ModelportError as exc:
            status = "invalid_input" if exc.status_code in _CALLERS_INPUT else "error"
            self._record_now(
                caller, request_id, name, ref, inputs, None, started, status, exc.message
            )
            raise
        except Exception:
            # A bug: the request middleware logs the traceback once and answers 500.
            self._record_now(
                caller, request_id, name, ref, inputs, None, started, "error", INTERNAL_ERROR
            )
            raise
        self._record_now(
            caller, request_id, name, ref, inputs, result.top5, started, "success", None
        )
        return result

    def _record_now(
        self,
        caller: Principal,
        request_id: str,
        name: str,
        ref: VersionRef | None,
        inputs: dict[str, Any],
        outputs: list[dict[str, Any]] | None,
        started: float,
        status: str,
        error: str | None,
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        # Label by registered name only: a caller's made-up names must not grow the metrics.
        model_label = ref.model_name if ref is not None else "unresolved"
        count_prediction(model_label, status, elapsed_ms / 1000)
        self.log.record(
            LogEntry(
                request_id=request_id,
                model_name=ref.model_name if ref is not None else name.replace("\x00", "\ufffd"),
                model_version=str(ref.version) if ref is not None else None,
                inputs=inputs,
                outputs=outputs,
                latency_ms=round(elapsed_ms, 3),
                status=status,
                error=error.replace("\x00", "\ufffd") if error else None,
                user_id=caller.user_id,
                api_key_id=caller.api_key_id,
                client_address=caller.client_address[:64],
            )
        )

    def _log(
        self,
        request_id: str,
        result: Classification,
        record: ImagePrediction,
    ) -> None:
        self.log.record(
            LogEntry(
                request_id=request_id,
                model_name=result.model_name,
                model_version=result.model_version,
                inputs={"image_id": str(record.id), "sha256": record.sha256},
                outputs=result.top5,
                latency_ms=round(result.latency_ms, 3),
                status="success",
                user_id=record.owner_id,
                client_address=record.client_address,
            )
        )

    # --- reading and curating -------------------------------------------------------------

    async def get(self, viewer: Principal, image_id: uuid.UUID) -> ImagePrediction:
        async with self.session_factory() as session:
            return await self._get(session, viewer, image_id)

    async def _get(
        self, session: AsyncSession, viewer: Principal, image_id: uuid.UUID
    ) -> ImagePrediction:
        record = await session.get(ImagePrediction, image_id)
        if record is None or not viewer.can_access_by_id(record.owner_id):
            raise NotFoundError(f"image prediction {image_id} not found")
        return record

    async def list(
        self,
        viewer: Principal,
        *,
        status: str | None,
        label: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[ImagePrediction], int]:
        """Newest first. A label matches the model's top answer or the human correction."""
        query = select(ImagePrediction)
        if not viewer.is_admin:
            query = query.where(ImagePrediction.owner_id == viewer.user_id)
        if status is not None:
            query = query.where(ImagePrediction.status == status)
        if label is not None:
            query = query.where(
                or_(
                    ImagePrediction.top_prediction == label,
                    ImagePrediction.corrected_label == label,
                )
            )
        async with self.session_factory() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            page = await session.scalars(
                query.order_by(ImagePrediction.created_at.desc(), ImagePrediction.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return list(page), int(total or 0)

    async def _changeable(
        self,
        session: AsyncSession,
        caller: Principal,
        image_id: uuid.UUID,
        delete_token: str | None,
    ) -> ImagePrediction:
        """Reading needs only the id, changing more: the owner or an administrator (with the
        'manage' scope), or for an anonymous upload the delete token returned with it."""
        record = await session.get(ImagePrediction, image_id)
        if record is not None and delete_token is not None and _token_matches(record, delete_token):
            return record
        if record is None or not caller.can_access_by_id(record.owner_id):
            raise NotFoundError(f"image prediction {image_id} not found")
        if not caller.can_change(record.owner_id):
            if delete_token is not None:
                raise ForbiddenError("this delete token does not belong to this image")
            raise ForbiddenError(
                "an anonymous upload is corrected or deleted with the X-Delete-Token header "
                "returned when it was uploaded (or by an administrator)"
            )
        if "manage" not in caller.scopes:
            raise ForbiddenError("this API key lacks the 'manage' scope")
        return record

    async def correct(
        self,
        viewer: Principal,
        image_id: uuid.UUID,
        label: str,
        confidence: float,
        delete_token: str | None = None,
    ) -> ImagePrediction:
        """Record a person's answer beside the model's, attributed and timestamped."""
        async with self.session_factory() as session:
            record = await self._changeable(session, viewer, image_id, delete_token)
            record.corrected_label = label
            record.corrected_confidence = confidence
            record.corrected_by = viewer.user_id
            record.corrected_at = datetime.now(UTC)
            await session.commit()
            return record

    async def delete(
        self, viewer: Principal, image_id: uuid.UUID, delete_token: str | None = None
    ) -> None:
        """Remove the record and the stored image (unless another record holds the same file)."""
        async with self.session_factory() as session:
            record = await self._changeable(session, viewer, image_id, delete_token)
            uri, sha256 = record.artifact_uri, record.sha256
            await session.delete(record)
            await session.commit()
            still_used = await session.scalar(
                select(func.count()).where(ImagePrediction.sha256 == sha256)
            )
        if not still_used:
            self.store.delete(uri)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_matches(record: ImagePrediction, token: str) -> bool:
    stored = record.delete_token_sha256
    return stored is not None and hmac.compare_digest(_token_hash(token), stored)


def _apply(record: ImagePrediction, result: Classification) -> None:
    record.status = "completed"
    record.top_prediction = result.top5[0]["label"]
    record.confidence = result.top5[0]["probability"]
    record.all_predictions = result.top5
    record.model_name = result.model_name
    record.model_version = result.model_version
    record.latency_ms = round(result.latency_ms, 3)
    record.error = None
    record.completed_at = datetime.now(UTC)
