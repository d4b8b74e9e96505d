"""The registry of published weights: one frozen entry per set (url, sha256, classes, model arguments
and, above all, the preprocessing the weights expect), kept as data, and the preprocessing presets of the
frameworks they come from."""
from __future__ import annotations

import dataclasses
import importlib.resources
import urllib.parse
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..models.configs import FID_GRAPH
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
    categories_file: str | None        # package resource, one class name per line in index order
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

    def categories(self) -> list[str] | None:
        """Class names in index order, or None if the entry has none."""
        return None if self.categories_file is None else list(_read_categories(self.categories_file))

    def config(self) -> dict:
        """Constructor kwargs for ``build_model(self.arch, **config)``."""
        return {"num_classes": self.num_classes, **self.model_config}


@cache
def _read_categories(resource: str) -> tuple[str, ...]:
    text = importlib.resources.files("inceptionv3").joinpath(resource).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def check_sha(sha: str, what: str) -> None:
    """Refuse a sha256 that is not 8 to 64 lowercase hex digits (a full digest or a published prefix)."""
    if not (8 <= len(sha) <= 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{what}: sha256 must be 8 to 64 lowercase hex characters, got {sha!r}")


_HALF = (0.5, 0.5, 0.5)   # mean = std = 0.5: inputs in [-1, 1], the TF convention

# TF's evaluation (Keras' preprocess_input, slim's inception_preprocessing): a 0.875 central crop
# (299 of 342) resized bilinearly, inputs in [-1, 1]. Weights ported from TF expect it.
TF_PREPROCESS = Preprocess(input_size=299, resize_size=342, interpolation="bilinear", mean=_HALF, std=_HALF)
# timm's evaluation of its InceptionV3 weights: crop 0.875, so 299 px from floor(299 / 0.875) = 341,
# bicubic; mean/std are per weight set (these are the TF ports').
TIMM_PREPROCESS = Preprocess(input_size=299, resize_size=341, interpolation="bicubic", mean=_HALF, std=_HALF)

# One row per published set of weights; variants of the network are each row's model_config.
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
        # behind transform_input=True. Here it is simply this entry's preprocessing.
        preprocess=TF_PREPROCESS,
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
        num_classes=FID_GRAPH["num_classes"],
        categories_file=None,
        # The FID metric modes (metrics.preprocess) squash to 299x299 without a crop; this is the closest
        # classification preset: inputs in [-1, 1] at 299 px.
        preprocess=dataclasses.replace(TF_PREPROCESS, resize_size=299),
        model_config={k: v for k, v in FID_GRAPH.items() if k != "num_classes"},
        source="pytorch-fid (TF inception-2015-12-05, the FID network)",
        license="Apache-2.0 (pytorch-fid; weights ported from TensorFlow)",
    ),
    # timm's four InceptionV3 weight sets, as timm evaluates them (TIMM_PREPROCESS), 1000 classes,
    # torchvision's pooling (timm's InceptionV3 has no TF-style pooling option, even for the TF ports).
    # timm publishes no sha256 for these files (only Hugging Face's LFS pointer records one): "" = none
    # published, so the first download needs --trust-on-first-use. Pin the LFS sha256 here once it has
    # been checked.
    *(WeightsEntry(
        name=f"inception_v3.{tag}",
        url=f"https://huggingface.co/timm/inception_v3.{tag}/resolve/main/model.safetensors",
        sha256="",
        arch="inception_v3",
        num_classes=1000,
        categories_file="imagenet_classes.txt",
        preprocess=dataclasses.replace(TIMM_PREPROCESS, mean=mean, std=std),
        # Only the torchvision port keeps the aux head in its file.
        model_config={"aux_logits": tag == "tv_in1k", "count_include_pad": True, "last_pool": "avg"},
        source=f"timm inception_v3.{tag}: {origin}",
        license="Apache-2.0 (timm model card)",
        metrics={"acc@1": top1, "acc@5": top5},
    # top-1 as timm reports it; top-5 from timm's results/results-imagenet.csv
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


def imagenet_class_names(num_classes: int) -> list[str] | None:
    """The ImageNet-1k class names (index order of torchvision, timm and Keras alike) for a 1000-class
    network that carries no names of its own; None for any other class count."""
    return REGISTRY["imagenet"].categories() if num_classes == 1000 else None


def get_entry(name: str) -> WeightsEntry:
    """The registry entry called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None
