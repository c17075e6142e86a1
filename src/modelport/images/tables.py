"""One uploaded image and what became of it: the model's answer and any human correction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from modelport.db.base import Base, new_id, utcnow


class ImagePrediction(Base):
    __tablename__ = "image_predictions"
    __table_args__ = (Index("ix_image_predictions_owner_created", "owner_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    owner_id: Mapped[uuid.UUID | None]
    client_address: Mapped[str | None] = mapped_column(String(64))
    # The client's file name is metadata only; the stored file is named by its sha256.
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int]
    height: Mapped[int]
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    job_id: Mapped[uuid.UUID | None]
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    top_prediction: Mapped[str | None] = mapped_column(String(128), index=True)
    confidence: Mapped[float | None]
    all_predictions: Mapped[list[Any] | None]
    latency_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    corrected_label: Mapped[str | None] = mapped_column(String(128))
    corrected_confidence: Mapped[float | None]
    corrected_by: Mapped[uuid.UUID | None]
    corrected_at: Mapped[datetime | None]
    # SHA-256 of the token handed to an anonymous uploader, who may then correct or delete it.
    delete_token_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
