"""The seed network: the compact two-module ``InceptionMini`` exactly as the project's source document
prints it, a small fast model for small images behind the same forward contract as InceptionV3."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, check_input_size
from .taps import validate_taps

MINI_MIN_INPUT_SIZE = 27   # the mini network has only the stem's two pools


class InceptionModule(nn.Module):
    """The seed document's module: 1x1 | 1x1-3x3 | 1x1-5x5 | maxpool-1x1, as printed (no BN, no ReLU)."""

    def __init__(self, in_channels: int, out1x1: int, out3x3red: int, out3x3: int,
                 out5x5red: int, out5x5: int, out_pool: int) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(in_channels, out1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels, out3x3red, kernel_size=1),
            nn.Conv2d(out3x3red, out3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            nn.Conv2d(in_channels, out5x5red, kernel_size=1),
            nn.Conv2d(out5x5red, out5x5, kernel_size=5, padding=2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(in_channels, out_pool, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionMini(Classifier):
    """The compact network printed in the project's source document, kept exactly as printed.

    How it differs from InceptionV3: a five-conv stem like InceptionV3's, but with biased convs and no
    batch norm; ReLU after conv2-conv5 only (not after conv1, and nowhere inside the Inception modules,
    whose branches are purely linear); two GoogLeNet-style modules (with a 5x5 branch and a max-pool
    branch) instead of eleven factorized blocks; no aux head; 288 features. 925,912 parameters at 1000
    classes. It is a small, fast model for small images (any side >= 27 px).
    """
    arch = "inception_mini"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.config = {"num_classes": num_classes, "dropout": dropout, "in_chans": in_chans}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = False
        self.num_features = 288
        self.min_input_size = MINI_MIN_INPUT_SIZE
        self.conv1 = nn.Conv2d(in_chans, 32, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=3)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv4 = nn.Conv2d(64, 80, kernel_size=1)
        self.conv5 = nn.Conv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.inception1 = InceptionModule(192, 64, 48, 64, 64, 96, 32)
        self.inception2 = InceptionModule(256, 64, 48, 64, 64, 96, 64)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(288, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, "inception_mini")
        # N x 3 x 75 x 75
        x = self.conv1(x)              # N x 32 x 37 x 37 (no ReLU, as printed)
        x = F.relu(self.conv2(x))      # N x 32 x 35 x 35
        x = F.relu(self.conv3(x))      # N x 64 x 35 x 35
        x = self.maxpool1(x)           # N x 64 x 17 x 17
        x = F.relu(self.conv4(x))      # N x 80 x 17 x 17
        x = F.relu(self.conv5(x))      # N x 192 x 15 x 15
        x = self.maxpool2(x)           # N x 192 x 7 x 7
        x = self.inception1(x)         # N x 256 x 7 x 7
        return self.inception2(x)      # N x 288 x 7 x 7

    @torch.jit.unused
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward(x), None

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taps ``pool`` (288) and ``logits``; the InceptionV3 trunk taps do not exist here."""
        taps = validate_taps(taps)
        bad = [t for t in taps if t not in ("pool", "logits")]
        if bad:
            raise ValueError(f"inception_mini has only the taps 'pool' and 'logits', not {bad}")
        pooled = self.forward_head(self.forward_features(x), pre_logits=True)
        out = {"pool": pooled, "logits": self.fc(self.dropout(pooled))}
        return {t: out[t] for t in taps}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


def inception_mini(num_classes: int = 1000, **kwargs) -> InceptionMini:
    """The compact two-module network from the project's source document."""
    return InceptionMini(num_classes=num_classes, **kwargs)
