"""``python -m inceptionv3``: the same command as ``inceptionv3``."""
from .cli.main import run

run()
