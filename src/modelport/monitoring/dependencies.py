"""FastAPI provider for the prediction log writer the app factory puts on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.monitoring.prediction_log import PredictionLogWriter


def get_prediction_log(request: Request) -> PredictionLogWriter:
    log: PredictionLogWriter = request.app.state.prediction_log
    return log


PredictionLogDep = Annotated[PredictionLogWriter, Depends(get_prediction_log)]
