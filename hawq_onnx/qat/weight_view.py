"""What a model's forward may read of a quantized layer's weight: its description, not its values.

Some forwards read a layer's weight to learn its type (Hugging Face's ViT casts its pixels to
``patch_embeddings.projection.weight.dtype``). The fake-quant layer cannot hand out the tensor
itself: a forward that computed with it (``F.conv2d(x, self.conv.weight)``) would bypass the
quantizer and train or measure a model the plan does not describe. It hands out this view:
dtype, device and shape read as the weight's; any torch operation on it is an error that says
which layer to keep float.
"""

from __future__ import annotations

from typing import Any

import torch

from hawq_onnx.errors import OptionError


class WeightView:
    def __init__(self, tensor: torch.Tensor, where: str, name: str) -> None:
        self._tensor, self._where, self._name = tensor, where, name

    dtype = property(lambda self: self._tensor.dtype)
    device = property(lambda self: self._tensor.device)
    shape = property(lambda self: self._tensor.shape)
    ndim = property(lambda self: self._tensor.ndim)
    requires_grad = property(lambda self: self._tensor.requires_grad)

    def size(self, dim: int | None = None) -> Any:
        return self._tensor.size() if dim is None else self._tensor.size(dim)

    def dim(self) -> int:
        return self._tensor.dim()

    def numel(self) -> int:
        return self._tensor.numel()

    def is_floating_point(self) -> bool:
        return self._tensor.is_floating_point()

    def error(self) -> OptionError:
        return OptionError(f"the model's forward computes with {self._where}.{self._name} itself instead of calling "
                           f"the layer, so hawq-onnx cannot quantize it: keep it float (allocate with {{keep_float}} "
                           f"{self._where})", "keep_float")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        values = list(args) + list((kwargs or {}).values())
        view = next((a for a in values if isinstance(a, WeightView)), None)
        raise (view.error() if view is not None else TypeError(f"{func} on a WeightView"))

    def __getattr__(self, name: str) -> Any:  # anything else: computing with it
        if name.startswith("_"):
            raise AttributeError(name)
        raise self.error()
