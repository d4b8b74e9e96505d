"""Named pretrained weights, and reading and writing weights files.

A registry of frozen entries says where each set of weights lives, its hash, and everything a caller needs
to use it right: class names, model arguments and, above all, the preprocessing the weights expect.
Downloads are verified against the entry's hash and cached; files are read without running pickled code
(``weights_only=True`` or safetensors); our own saved models carry their arch, config, class names and
preprocessing as safetensors metadata, so one file is enough to rebuild the model.
"""
from __future__ import annotations

import importlib.resources
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .errors import WeightsError
from .preprocess import Preprocess


@dataclass(frozen=True)
class WeightsEntry:
    """One set of published weights and everything needed to use them correctly."""
    name: str
    url: str
    sha256: str                        # full hex digest, the prefix a publisher put in the file name, or
                                       # "" when none is published (then fetch needs trust_on_first_use)
    arch: str
    num_classes: int
    categories_file: Optional[str]     # package resource, one class name per line in index order
    preprocess: Preprocess
    model_config: dict = field(default_factory=dict, hash=False)   # constructor kwargs besides num_classes
    source: str = ""
    license: str = ""
    metrics: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.sha256:
            check_sha(self.sha256, f"weights entry {self.name!r}")
        url = urllib.parse.urlparse(self.url)
        # Plain http only for a mirror on this machine (tests serve files from 127.0.0.1).
        local = url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost")
        if url.scheme != "https" and not local:
            raise ValueError(f"weights entry {self.name!r}: url must be https, got {self.url!r}")
        if self.num_classes < 1:
            raise ValueError(f"weights entry {self.name!r}: num_classes must be positive")

    @property
    def file_name(self) -> str:
        """The cached file's name: the URL's last path segment."""
        return Path(urllib.parse.urlparse(self.url).path).name

    def categories(self) -> Optional[list[str]]:
        """Class names in index order, or None if the entry has none."""
        return None if self.categories_file is None else list(_read_categories(self.categories_file))

    def config(self) -> dict:
        """Constructor kwargs for ``build_model(self.arch, **config)``."""
        return {"num_classes": self.num_classes, **self.model_config}


@lru_cache(maxsize=None)
def _read_categories(resource: str) -> tuple[str, ...]:
    text = importlib.resources.files("inceptionv3").joinpath(resource).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def check_sha(sha: str, what: str) -> None:
    if not (8 <= len(sha) <= 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{what}: sha256 must be 8 to 64 lowercase hex characters, got {sha!r}")


_HALF = (0.5, 0.5, 0.5)   # mean = std = 0.5: inputs in [-1, 1], the TF convention


# One row per published set of weights; timm / FID variants are further rows with their own
# preprocess and model_config (e.g. count_include_pad=False, last_pool="max", 1008 classes).
_ENTRIES = (
    WeightsEntry(
        name="imagenet",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        # torchvision publishes only this 8-hex prefix of the sha256, in the file name.
        sha256="0cc3c7bd",
        arch="inception_v3",
        num_classes=1000,
        categories_file="imagenet_classes.txt",
        # These weights were ported from TensorFlow and expect inputs in [-1, 1]; torchvision hides that
        # behind transform_input=True. Here it is simply this entry's mean/std.
        preprocess=Preprocess(input_size=299, resize_size=342, interpolation="bilinear",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        model_config={"aux_logits": True, "count_include_pad": True, "last_pool": "avg"},
        source="torchvision IMAGENET1K_V1",
        license="BSD-3-Clause (torchvision); weights ported from TensorFlow (Apache-2.0)",
        metrics={"acc@1": 77.294, "acc@5": 93.450},
    ),
    WeightsEntry(
        name="fid",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        # pytorch-fid publishes only this 8-hex prefix of the sha256, in the file name (torch.hub style).
        sha256="6726825d",
        arch="inception_v3",
        num_classes=1008,
        categories_file=None,
        # The FID metric modes (pytorch-fid / tf / clean, in metrics.py) squash to 299x299 without a crop;
        # this is the closest classification preset: inputs in [-1, 1] at 299 px.
        preprocess=Preprocess(input_size=299, resize_size=299, interpolation="bilinear",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        # The TF 2015-12-05 graph as pytorch-fid ports it; its state dict has no aux head.
        model_config={"aux_logits": False, "count_include_pad": False, "last_pool": "max"},
        source="pytorch-fid (TF inception-2015-12-05, the FID network)",
        license="Apache-2.0 (pytorch-fid; weights ported from TensorFlow)",
    ),
    # timm's four InceptionV3 weight sets, as timm evaluates them: 299 px, crop 0.875 (timm resizes to
    # floor(299 / 0.875) = 341), bicubic, 1000 classes, torchvision's pooling (timm's InceptionV3 has no
    # TF-style pooling option, even for the TF ports). timm publishes no sha256 for these files (only
    # Hugging Face's LFS pointer records one): "" = none published, so the first download needs
    # --trust-on-first-use. Pin the LFS sha256 here once it has been checked.
    *(WeightsEntry(
        name=f"inception_v3.{tag}",
        url=f"https://huggingface.co/timm/inception_v3.{tag}/resolve/main/model.safetensors",
        sha256="",
        arch="inception_v3",
        num_classes=1000,
        categories_file="imagenet_classes.txt",
        preprocess=Preprocess(input_size=299, resize_size=341, interpolation="bicubic", mean=mean, std=std),
        # Only the torchvision port keeps the aux head in its file.
        model_config={"aux_logits": tag == "tv_in1k", "count_include_pad": True, "last_pool": "avg"},
        source=f"timm inception_v3.{tag}: {origin}",
        license="Apache-2.0 (timm model card)",
        metrics={"acc@1": top1, "acc@5": top5},
    # top-1 as the issue quotes timm's reports; top-5 from timm's results/results-imagenet.csv
    # (huggingface/pytorch-image-models @ 0173a139), whose rows read top-1 77.434 / 77.862 / 77.592 /
    # 78.806 for tv / tf / tf_adv / gluon: another evaluation run, within 0.04 points of these.
    ) for tag, origin, mean, std, top1, top5 in (
        ("tv_in1k", "torchvision's inception_v3_google-1a9a5a14.pth", _HALF, _HALF, 77.472, 93.474),
        ("tf_in1k", "TF-slim inception_v3_2016_08_28", _HALF, _HALF, 77.866, 93.644),
        ("tf_adv_in1k", "TF adv_inception_v3_2017_08_18 (adversarially trained)", _HALF, _HALF, 77.598,
         93.730),
        ("gluon_in1k", "Gluon CV model zoo", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 78.806, 94.374),
    )),
)


REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> WeightsEntry:
    """The registry entry called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None
