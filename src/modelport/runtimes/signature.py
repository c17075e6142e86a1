"""Signatures: what a model takes and returns, and the validators built from them."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

FieldType = Literal["float", "int", "image", "str"]
_PYTHON_TYPES: dict[str, type] = {"float": float, "int": int}


class FieldSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    type: FieldType = "float"
    description: str = ""
    unit: str | None = None
    example: float | None = None
    minimum: float | None = None
    maximum: float | None = None


class Signature(BaseModel):
    """Inputs are one row of named features; outputs are named values per row."""

    model_config = ConfigDict(frozen=True)

    task: Literal["regression", "classification", "image_classification"]
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def example_row(self) -> dict[str, float]:
        return {spec.name: spec.example for spec in self.inputs if spec.example is not None}

    @property
    def takes_image(self) -> bool:
        return any(spec.type == "image" for spec in self.inputs)

    def row_model(self) -> type[BaseModel]:
        return _row_model(self)


@functools.lru_cache(maxsize=256)
def _row_model(signature: Signature) -> type[BaseModel]:
    """A strict Pydantic model for one input row: no extra fields, no strings, no NaN/Infinity."""
    fields: dict[str, Any] = {}
    for spec in signature.inputs:
        description = spec.description + (f" ({spec.unit})" if spec.unit else "")
        constraint = Field(
            ge=spec.minimum,
            le=spec.maximum,
            description=description or None,
            examples=[spec.example] if spec.example is not None else None,
        )
        fields[spec.name] = (Annotated[_PYTHON_TYPES[spec.type], constraint], ...)
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model("InputRow", __config__=config, **fields)
