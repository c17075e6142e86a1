"""API shapes for training."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from modelport.training import algorithms
from modelport.training.algorithms import Algorithm, Task


class TrainIn(BaseModel):
    """Train on a registered dataset, or on inline rows (``X`` and ``y``)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Algorithm
    task: Task | None = Field(
        default=None,
        description="random_forest / gradient_boosting: regression (default) "
        "or classification; the others imply it",
    )
    dataset: Annotated[str | None, Field(max_length=64, description="Registered dataset")] = None
    target: Annotated[str | None, Field(max_length=64, description="Target column")] = None
    features: Annotated[list[str] | None, Field(max_length=500)] = None
    X: Annotated[list[list[float]] | None, Field(max_length=100_000)] = None
    y: Annotated[list[float | int | str] | None, Field(max_length=100_000)] = None
    feature_names: Annotated[list[str] | None, Field(max_length=500)] = None
    params: dict[str, float | int] = Field(
        default_factory=dict,
        description="Hyperparameters: n_estimators (1-500), max_depth (1-64), min_samples_leaf, "
        "max_iter, alpha, C, learning_rate, as the algorithm takes them",
    )
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2
    random_state: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42

    @field_validator("params")
    @classmethod
    def _sane_params(cls, params: dict[str, float | int], info: ValidationInfo) -> dict[str, Any]:
        """Only the algorithm's own parameters, within sane bounds (algorithms.check_params)."""
        algorithm = info.data.get("algorithm")
        return algorithms.check_params(algorithm, params) if algorithm is not None else params

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> TrainIn:
        if info.context and info.context.get("csv_upload"):  # the rows come as a CSV file
            if self.target is None:
                raise ValueError("`target` names the CSV column to predict")
            return self
        inline = self.X is not None or self.y is not None
        if inline == (self.dataset is not None):
            raise ValueError("give either `dataset` (with `target`) or inline `X` and `y`")
        if inline and (self.X is None or self.y is None or len(self.X) != len(self.y)):
            raise ValueError("`X` and `y` must both be given, with one target per row")
        if self.dataset is not None and self.target is None:
            raise ValueError("`target` names the column to predict")
        return self


class TrainAcceptedOut(BaseModel):
    job_id: uuid.UUID
    status: str
    model: str
    dataset: str


class SampleDataOut(BaseModel):
    X: list[list[float]]
    y: list[float]
    feature_names: list[str]
    coefficients: list[float]
    example_request: dict[str, Any]
