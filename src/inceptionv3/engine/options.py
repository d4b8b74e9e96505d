"""Fast inference engines: a fused graph, bf16 and int8 precision, and selectable runtimes.

``fuse_for_inference`` rewrites a trained model for inference only: batch norm folded into the convs,
and in every Mixed block the 1x1 convs that read the block input fused into one wider conv whose output
is split (Mixed_5b: 64 + 48 + 64 + 32 channels in one GEMM instead of four). The average-pool branch's
1x1 conv joins that GEMM too: a bias-free 1x1 conv commutes with a 3x3 average pool (both are linear
and a zero pad stays zero), so we pool its narrow output instead of the wide input, then add the bias
and the ReLU. The result equals the model within float rounding (tested at 1e-4 relative).

``build_engine`` wraps the model for one output (logits, pooled features or a tap) at one
precision on one backend:

| backend     | fp32                   | bf16                          | int8                                 |
|-------------|------------------------|-------------------------------|--------------------------------------|
| torch       | fused graph, oneDNN    | bf16 weights + activations    | -                                    |
| onnxruntime | BN-folded graph        | -                             | static QDQ of the pools-moved graph  |
| openvino    | BN folded, pools moved | inference hint bf16           | static QDQ of the BN-folded graph    |

ONNX Runtime and OpenVINO get the BN-folded graph without the sibling fusion, which slowed both; "pools
moved": each 3x3 average pool runs after its branch's 1x1 conv, where that was faster and agreed (see
``build_engine``). int8 is quantized by ONNX Runtime's static quantizer (per-channel weights, calibrated;
so OpenVINO int8 needs onnxruntime installed too).

Exported graphs are cached under ``$INCEPTIONV3_HOME/cache/engines`` keyed by a digest of the weights,
input shape, output, precision and calibration images, so the export cost is paid once.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "int8")


BACKENDS = ("torch", "onnxruntime", "openvino")


MIN_CALIBRATION_IMAGES = 32    # fewer leaves activation ranges to chance (one odd image sets a whole scale)


AUTO_EXPORT_MIN_IMAGES = 256   # backend "auto" exports to OpenVINO/ONNX Runtime from this many images on


# Which (backend, precision) pairs exist; the pip command that brings each backend.
SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


PACKAGES = {"onnxruntime": ("onnxruntime", "pip install 'inceptionv3[export]'"),   # (runtime, install)
             "openvino": ("openvino", "pip install 'inceptionv3[openvino]'")}


# Outputs every backend computes; the other taps run on the torch backend only.
EXPORTED_OUTPUTS = ("logits", "pool")


# What `inceptionv3 export` writes: ONNX (ONNX Runtime, OpenVINO, TensorRT), TorchScript, torch.export.
EXPORT_FORMATS = ("onnx", "torchscript", "pt2")
