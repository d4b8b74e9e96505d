"""Convert InceptionV3 weights from other frameworks into our self-describing .safetensors files.

Every converter ends the same way: the tensors go through the strict loader (a shape check on every
tensor; one error listing missing, unexpected and mis-shaped keys), then ``save_model`` writes the file
with arch, model config, class names and preprocessing as metadata.

Key maps:

- torchvision / timm / pytorch-fid: the keys are already ours (torchvision's); the file is validated and
  rewritten. pytorch-fid's file is the FID graph: 1008 classes, TF-style pooling, a max-pool in Mixed_7c.
- Keras HDF5 (Keras 2 ``.h5`` from ``save_weights`` / ``save``, Keras 3 ``.weights.h5``):
  ``conv2d[_k]`` -> the k-th ``*.conv.weight`` of ``CONV_ORDER`` (kernel HWIO -> OIHW, transposed);
  ``batch_normalization[_k]`` -> the k-th ``*.bn``: beta -> bias, moving_mean -> running_mean,
  moving_variance -> running_var, gamma -> weight (Keras' InceptionV3 has ``scale=False``: weight = 1);
  ``predictions`` kernel (in, out) -> ``fc.weight`` (out, in, transposed), bias -> ``fc.bias``.
  Layers are matched by creation order, i.e. the numeric suffix of their auto-generated names, never by
  the order they are stored in the file (alphabetical: conv2d_10 before conv2d_2). Keras pools with
  padding excluded, so the model is built with ``count_include_pad=False``; Keras has no aux head.
- TF-slim checkpoints (``inception_v3.ckpt`` of ``inception_v3_2016_08_28.tar.gz``, a single-file V1
  checkpoint; V2 ``PREFIX.index`` + ``PREFIX.data-*`` too), read by ``tf_bundle`` without TensorFlow:
  ``InceptionV3/<scope>/weights`` -> ``<block>.conv.weight`` (HWIO -> OIHW, transposed), with scopes from
  ``SLIM_CONV_SCOPES``; ``<scope>/BatchNorm/{beta,moving_mean,moving_variance}`` -> ``bn.{bias,running_mean,
  running_var}``; slim's BN has ``scale=False``, so ``bn.weight`` = 1 (a ``BatchNorm/gamma`` is used if
  present). ``Logits/Conv2d_1c_1x1`` and ``AuxLogits/Conv2d_2b_1x1`` are 1x1 convs with biases: weights
  (1, 1, in, out) -> ``fc.weight`` / ``AuxLogits.fc.weight`` (out, in). 1001 classes, index 0 = background:
  row 0 is dropped unless ``keep_background``. Slim pools with TF's SAME padding (padding excluded):
  ``count_include_pad=False``. ``global_step`` and other tensors outside the ``InceptionV3/`` scope,
  optimizer slots and ``ExponentialMovingAverage`` copies are skipped; ``ema=True`` takes a weight's
  ``.../ExponentialMovingAverage`` copy instead of the weight where the file has one.
"""
from __future__ import annotations

SOURCES = ("keras", "tf-slim", "torchvision", "timm", "fid")
