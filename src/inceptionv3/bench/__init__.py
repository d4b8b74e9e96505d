"""The inference benchmark behind `inceptionv3 bench`: our engines next to torchvision, ONNX Runtime and OpenVINO."""
from __future__ import annotations

# The runtimes compared with ours by default (each skipped with a note where its package is missing).
COMPARE = ("torchvision", "onnxruntime", "openvino")
