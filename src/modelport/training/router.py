"""Train a model over HTTP (202 + a job), and synthetic data to try it with."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, status
from pydantic import ValidationError

from modelport.auth.dependencies import Manager, priced
from modelport.datasets.csv_import import parse_csv
from modelport.errors import ForbiddenError, InvalidInputError
from modelport.http.dependencies import SettingsDep
from modelport.http.uploads import is_multipart, read_upload
from modelport.training.dependencies import TrainingServiceDep
from modelport.training.schemas import SampleDataOut, TrainAcceptedOut, TrainIn

router = APIRouter(tags=["training"])

_TRAIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": TrainIn.model_json_schema(ref_template="#/components/schemas/{model}"),
                "examples": {
                    "inline": {
                        "summary": "Rows in the body (paste GET /api/v1/ml/sample-data)",
                        "value": {
                            "algorithm": "ridge",
                            "X": [[0.1, 1.2], [0.4, 0.3], [1.0, 2.0]],
                            "y": [1.5, 0.9, 3.1],
                        },
                    },
                    "dataset": {
                        "summary": "A registered dataset",
                        "value": {
                            "algorithm": "random_forest",
                            "dataset": "winequality-red",
                            "target": "quality",
                        },
                    },
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "algorithm", "target"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "algorithm": {"type": "string"},
                        "target": {"type": "string"},
                        "task": {"type": "string"},
                        "features": {"type": "string", "description": "comma-separated"},
                        "params": {"type": "string", "description": "JSON object"},
                    },
                }
            },
        },
    }
}


async def _read_request(request: Request, max_rows: int) -> tuple[TrainIn, Any]:
    try:
        if is_multipart(request):
            upload = await read_upload(request, "CSV")
            parsed = parse_csv(upload.data, max_rows)
            fields: dict[str, Any] = dict(upload.fields)
            if isinstance(fields.get("features"), str):
                fields["features"] = [f.strip() for f in fields["features"].split(",") if f]
            if isinstance(fields.get("params"), str):
                fields["params"] = orjson.loads(fields["params"] or "{}")
            return TrainIn.model_validate(fields, context={"csv_upload": True}), parsed
        return TrainIn.model_validate_json(await request.body()), None
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"params: not valid JSON ({exc})") from None
    except ValidationError as exc:
        errors = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInputError(f"{errors[0]['msg']}", errors) from None


@router.post(
    "/api/v1/models/{name}/train",
    response_model=TrainAcceptedOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Train a new version in the background",
    description="Algorithms: linear_regression, ridge, logistic_regression, random_forest, "
    "gradient_boosting. Data: a registered `dataset` + `target`, inline `X` and `y`, or a CSV "
    "upload. Answers 202 with a job id; GET /api/v1/jobs/{id} shows the new version and its "
    "holdout metrics when done. The model is created (private) if it does not exist.",
    dependencies=[priced("training")],
    openapi_extra=_TRAIN_BODY,
    responses={400: {"description": "The uploaded CSV cannot be read"}},
)
async def train(
    name: Annotated[str, Path(max_length=64)],
    request: Request,
    caller: Manager,
    training: TrainingServiceDep,
    settings: SettingsDep,
) -> TrainAcceptedOut:
    if caller.is_anonymous:  # settled before a byte of the body is read
        raise ForbiddenError("sign in to train models")
    body, upload = await _read_request(request, settings.max_dataset_rows)
    job, dataset = await training.submit(caller, name, body, upload)
    return TrainAcceptedOut(job_id=job.id, status=job.status, model=name, dataset=dataset.name)


@router.get(
    "/api/v1/ml/sample-data",
    response_model=SampleDataOut,
    summary="Synthetic regression data to try the train endpoint with",
)
def sample_data(
    n: Annotated[int, Query(ge=10, le=10_000)] = 200,
    features: Annotated[int, Query(ge=1, le=50)] = 3,
    noise: Annotated[float, Query(ge=0, le=1000)] = 0.1,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> SampleDataOut:
    # Imported on use (scikit-learn is some 150 MB a worker needs only if this route is called),
    # and so a plain def: FastAPI runs it in a thread, and the first call's import of a second or
    # so, like the generation, keeps off the event loop.
    from sklearn.datasets import make_regression

    x, y, coefficients = make_regression(
        n_samples=n, n_features=features, noise=noise, coef=True, random_state=seed
    )
    rounded_x = np.round(x, 6).tolist()
    rounded_y = np.round(y, 6).tolist()
    return SampleDataOut(
        X=rounded_x,
        y=rounded_y,
        feature_names=[f"x{i}" for i in range(features)],
        # One feature makes scikit-learn return its coefficient as a scalar, not a list of one.
        coefficients=np.round(np.atleast_1d(coefficients), 6).tolist(),
        example_request={
            "algorithm": "linear_regression",
            "X": rounded_x[:50],
            "y": rounded_y[:50],
        },
    )
