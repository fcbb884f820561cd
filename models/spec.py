"""What the rest of hawq-onnx needs to know about a model besides its weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it and what its input looks like.

    ``input_shape`` excludes the batch dimension. ``mean``/``std`` normalise inputs that the
    data source has already scaled to [0, 1]; the ONNX model takes the normalised tensor.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple  # one sample's shape, or a core.model_inputs.Signature for several or integer inputs
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    default_weights: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None
