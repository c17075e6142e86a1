"""Queue training jobs and run them: dataset rows in, a verified new model version out."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.datasets import service as datasets
from modelport.datasets.csv_import import ParsedCsv, snake_case
from modelport.datasets.tables import Dataset, DatasetRow
from modelport.errors import InvalidInputError, NotFoundError
from modelport.jobs import service as jobs
from modelport.jobs.runner import JobRunner, PermanentJobError
from modelport.jobs.tables import Job
from modelport.registry import management
from modelport.registry import service as registry
from modelport.registry.tables import Model
from modelport.storage.protocol import ArtifactStore
from modelport.training import algorithms, budget
from modelport.training.budget import TrainingLimits
from modelport.training.isolation import train_in_child
from modelport.training.schemas import TrainIn

TRAIN_JOB = "train-model"


def _invalid(message: str, field: str) -> InvalidInputError:
    return InvalidInputError(
        message, [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    )


@dataclass
class TrainingService:
    session_factory: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    runner: JobRunner
    limits: TrainingLimits = field(default_factory=TrainingLimits)

    async def submit(
        self, caller: Principal, model_name: str, request: TrainIn, upload: ParsedCsv | None
    ) -> tuple[Job, Dataset]:
        """Check the request, keep its data as a dataset, and queue the job with it (one
        transaction: an accepted job always has its data)."""
        management.check_name(model_name, "model name", management.NAME_PATTERN)
        task = algorithms.task_for(request.algorithm, request.task)
        params = dict(request.params)  # checked against the algorithm's bounds by the schema
        if upload is not None or request.X is not None:  # refused before its rows are stored
            rows = len(upload.rows) if upload is not None else len(request.X or [])
            width = len(upload.columns) - 1 if upload is not None else len((request.X or [[]])[0])
            self._check_cost(request.algorithm, params, rows, len(request.features or []) or width)
        async with self.session_factory() as session:
            model = await self._model_for(session, caller, model_name, task)
            dataset = await self._dataset_for(session, caller, model_name, request, upload)
            target, features = _columns(dataset, request)
            self._check_cost(request.algorithm, params, dataset.row_count, len(features))
            job = await jobs.enqueue(
                session,
                TRAIN_JOB,
                {
                    "model": model.name,
                    "dataset_id": str(dataset.id),
                    "target": target,
                    "features": features,
                    "algorithm": request.algorithm,
                    "task": task,
                    "params": params,
                    "test_size": request.test_size,
                    "random_state": request.random_state,
                },
                owner_id=caller.user_id,
                # Bad data or parameters fail for good at once (PermanentJobError); a runner
                # killed mid-job is another attempt once its lease runs out, like any job.
            )
            await session.commit()
        self.runner.notify()
        return job, dataset

    def _check_cost(self, algorithm: str, params: dict[str, Any], rows: int, features: int) -> None:
        """Refuse, before it is queued, a job that would run for many minutes (and take the
        memory and disk its trees need): its cost is known from its size and parameters."""
        refusal = budget.over_budget_message(
            budget.estimate(algorithm, params, rows, features), self.limits
        )
        if refusal is not None:
            raise _invalid(refusal, "params")

    async def _model_for(
        self, session: AsyncSession, caller: Principal, name: str, task: str
    ) -> Model:
        try:
            model = await management.changeable_model(session, caller, name)
        except NotFoundError:
            if await session.scalar(select(Model.id).where(Model.name == name)) is not None:
                raise  # someone else's model: the same answer as a missing one
            return await management.create_model(
                session, caller, name=name, description="", task=task, public=False
            )
        if model.task != task:
            raise _invalid(f"model {name!r} is a {model.task} model; this trains {task}", "task")
        return model

    async def _dataset_for(
        self,
        session: AsyncSession,
        caller: Principal,
        model_name: str,
        request: TrainIn,
        upload: ParsedCsv | None,
    ) -> Dataset:
        if request.dataset is not None and upload is None:
            return await datasets.get_visible_dataset(session, caller, request.dataset)
        if upload is not None:
            columns, rows, sha256 = upload.columns, upload.rows, upload.sha256
        else:
            columns, rows, sha256 = _inline_table(request)
        return await datasets.register_dataset(
            session,
            name=f"{model_name[:40]}-training-{uuid.uuid4().hex[:8]}",
            columns=columns,
            rows=rows,
            splits=[None] * len(rows),
            source="training request",
            sha256=sha256,
            owner_id=caller.user_id,
        )

    # --- the job ----------------------------------------------------------------------------

    async def handle_job(self, job: Job) -> dict[str, Any]:
        spec = job.payload
        async with self.session_factory() as session:
            dataset = await session.get(Dataset, uuid.UUID(spec["dataset_id"]))
            if dataset is None:
                raise PermanentJobError("the training dataset was deleted")
            values = list(
                await session.scalars(
                    select(DatasetRow.values)
                    .where(DatasetRow.dataset_id == dataset.id)
                    .order_by(DatasetRow.row_index)
                )
            )
        features, target = _arrays(values, spec["features"], spec["target"], spec["task"])
        # In a child process: a job over its time or memory limit is killed, not the server.
        prepared, metrics = await train_in_child(spec, features, target, self.limits)
        uploader = Principal("job", user_id=job.owner_id, role="user")
        async with self.session_factory() as session:
            model = await registry.get_model(session, spec["model"])
            version = await management.add_version(
                session,
                self.store,
                uploader,
                model,
                prepared,
                description=f"{spec['algorithm']} trained on dataset {dataset.name}",
                metrics=metrics,
            )
            await session.commit()
        return {
            "model": spec["model"],
            "version": version.version,
            "flavor": version.flavor,
            "metrics": metrics,
            "dataset": dataset.name,
        }


def _inline_table(request: TrainIn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    assert request.X is not None and request.y is not None
    width = len(request.X[0]) if request.X else 0
    if width == 0 or any(len(row) != width for row in request.X):
        raise _invalid("every row of X must have the same, non-zero number of values", "X")
    names = [snake_case(n) for n in (request.feature_names or [f"x{i}" for i in range(width)])]
    if len(names) != width or len(set(names)) != width or "target" in names:
        raise _invalid(
            f"feature_names must be {width} distinct names (not 'target')", "feature_names"
        )
    numeric_target = all(isinstance(v, int | float) for v in request.y)
    columns = [{"name": n, "type": "float"} for n in names]
    columns.append({"name": "target", "type": "float" if numeric_target else "string"})
    rows = [
        {**dict(zip(names, row, strict=True)), "target": y}
        for row, y in zip(request.X, request.y, strict=True)
    ]
    digest = hashlib.sha256(repr((request.X, request.y)).encode()).hexdigest()
    return columns, rows, digest


def _columns(dataset: Dataset, request: TrainIn) -> tuple[str, list[str]]:
    by_name = {c["name"]: c for c in dataset.columns}
    target = request.target or "target"
    if target not in by_name:
        raise _invalid(f"dataset {dataset.name!r} has no column {target!r}", "target")
    features = request.features or [
        c["name"] for c in dataset.columns if c["name"] != target and c["type"] == "float"
    ]
    missing = [f for f in features if f not in by_name]
    if missing:
        raise _invalid(f"dataset {dataset.name!r} has no columns {missing}", "features")
    not_numeric = [f for f in features if by_name[f]["type"] != "float"]
    if not_numeric or not features:
        raise _invalid(f"features must be numeric columns; not numeric: {not_numeric}", "features")
    return target, features


def _arrays(
    rows: list[dict[str, Any]], features: list[str], target: str, task: str
) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) < 10:
        raise PermanentJobError(f"the dataset has {len(rows)} rows; at least 10 are needed")
    table = [[row.get(name) for name in features] for row in rows]
    labels = [row.get(target) for row in rows]
    if any(v is None for line in table for v in line) or any(v is None for v in labels):
        raise PermanentJobError("the dataset has missing values in the chosen columns")
    if task == "regression" and not all(isinstance(v, int | float) for v in labels):
        raise PermanentJobError(f"regression needs a numeric target; {target!r} is not")
    return np.asarray(table, dtype=np.float64), np.asarray(labels)
