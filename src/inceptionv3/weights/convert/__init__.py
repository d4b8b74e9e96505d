"""Converters from other frameworks into our self-describing .safetensors files.

``convert()`` (in ``run``) is the one entry. Each source's module reads its file into our state dict and
model config, by a written key map: ``keras`` (Keras 2 and 3 HDF5), ``tfslim`` (TF-slim checkpoints, read
by ``tf_bundle`` without TensorFlow) and ``pytorch`` (torchvision, timm and pytorch-fid files, whose keys
are already ours). Then every tensor goes through the strict loader (a shape check on every tensor; one
error listing missing, unexpected and mis-shaped keys) and ``save_model`` writes the file with arch, model
config, class names and preprocessing as metadata.

This module is torch-free: the command's parser reads ``SOURCES`` from it.
"""
from __future__ import annotations

SOURCES = ("keras", "tf-slim", "torchvision", "timm", "fid")
