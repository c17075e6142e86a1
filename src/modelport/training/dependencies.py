"""FastAPI provider for the training service the app factory puts on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.training.service import TrainingService


def get_training_service(request: Request) -> TrainingService:
    training: TrainingService = request.app.state.training
    return training


TrainingServiceDep = Annotated[TrainingService, Depends(get_training_service)]
