"""``POST /predict``: the built-in wine model's own route, one flat object of 11 measurements."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from modelport.auth.dependencies import PREDICTOR_SECURITY, calls_predictor, predictor
from modelport.builtin.wine import WINE_MODEL_NAME, WINE_SIGNATURE
from modelport.serving.batcher import TIMEOUT_HEADER
from modelport.serving.router import PREDICT_ERRORS, json_body, json_response, request_id
from modelport.serving.service import PredictionService, Target

router = APIRouter(tags=["predict"])


class WinePredictionOut(BaseModel):
    predicted_quality: float = Field(description="Predicted quality score, 0-10", examples=[5.4])
    model_version: str = Field(examples=["1"])
    timestamp: datetime


_WINE_BODY = json_body(
    WINE_SIGNATURE.row_model().model_json_schema(),
    {"first red wine": {"value": WINE_SIGNATURE.example_row()}},
)


@router.post(
    "/predict",
    response_model=WinePredictionOut,
    summary="Predict a wine's quality from its 11 measurements",
    description="The built-in wine-quality model (production alias). Send the features as one "
    "flat JSON object; every field is required and bounded (see the schema).",
    openapi_extra={**_WINE_BODY, **PREDICTOR_SECURITY},
    responses=PREDICT_ERRORS,
)
@calls_predictor
async def predict_wine(request: Request) -> Response:
    # No FastAPI dependencies on the hot path: each costs more than the work it stands for.
    caller = await predictor(request)
    predictions: PredictionService = request.app.state.predictions
    result = await predictions.predict(
        Target(WINE_MODEL_NAME),
        await request.body(),
        request_id(request),
        caller,
        allow_batch=False,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    return json_response(
        {
            "predicted_quality": result.predictions[0]["predicted_quality"],
            "model_version": result.model_version,
            "timestamp": result.timestamp,
        }
    )
