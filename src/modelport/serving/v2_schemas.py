"""Open Inference Protocol (KServe V2) bodies: what the /v2 endpoints read and answer."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# Every datatype the protocol names; which ones a model accepts is the service's business.
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)

TensorName = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Dimension = Annotated[StrictInt, Field(ge=0)]


class _Lenient(BaseModel):
    """Fields the protocol does not define are ignored: extensions may add some."""

    model_config = ConfigDict(extra="ignore")


class RequestInput(_Lenient):
    name: TensorName
    shape: list[Dimension] = Field(max_length=8)
    datatype: StrictStr
    data: Any = None  # flat or nested JSON array; absent when the tensor travels as binary
    parameters: dict[str, Any] = Field(default_factory=dict)


class RequestOutput(_Lenient):
    name: TensorName
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(_Lenient):
    id: StrictStr | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1, max_length=1024)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=1024)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # None when sent as binary (see parameters.binary_data_size)
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a dimension of any size (the rows)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: StrictBool


class ServerReady(BaseModel):
    ready: StrictBool


class ModelReady(BaseModel):
    name: str
    ready: StrictBool


class ProtocolError(BaseModel):
    error: str
    request_id: str = Field(description="Quote it when reporting the error")
