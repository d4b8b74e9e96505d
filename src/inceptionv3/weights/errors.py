"""Named pretrained weights, and reading and writing weights files.

A registry of frozen entries says where each set of weights lives, its hash, and everything a caller needs
to use it right: class names, model arguments and, above all, the preprocessing the weights expect.
Downloads are verified against the entry's hash and cached; files are read without running pickled code
(``weights_only=True`` or safetensors); our own saved models carry their arch, config, class names and
preprocessing as safetensors metadata, so one file is enough to rebuild the model.
"""
from __future__ import annotations


class WeightsError(RuntimeError):
    """A weights file or download is unusable; the message names the file or URL and the fix."""
