"""The one error type of the weights package, torch-free so the command line can catch it cheaply."""
from __future__ import annotations


class WeightsError(RuntimeError):
    """A weights file or download is unusable; the message names the file or URL and the fix."""
