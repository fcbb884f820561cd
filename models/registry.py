"""The zoo: names a user can pass to ``--model``."""

from __future__ import annotations

from pathlib import Path

from hawq_onnx.models.cifar_resnet import resnet
from hawq_onnx.models.digits_cnn import DigitsCNN
from hawq_onnx.models.spec import ModelSpec

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# The shared ResNet20 checkpoint was trained with ImageNet's constants; keep them.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)


def _cifar_resnet(depth: int) -> ModelSpec:
    return ModelSpec(
        name=f"resnet{depth}-cifar10",
        factory=lambda: resnet(depth),
        input_shape=(3, 32, 32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        class_names=CIFAR10_CLASSES,
        description=f"ResNet-{depth} for CIFAR-10, option-A shortcuts (akamaster naming)",
    )


ZOO: dict[str, ModelSpec] = {
    "digits-cnn": ModelSpec(
        name="digits-cnn",
        factory=DigitsCNN,
        input_shape=(1, 8, 8),
        mean=(0.5,),
        std=(0.5,),
        class_names=tuple(str(i) for i in range(10)),
        default_weights=str(WEIGHTS_DIR / "digits_cnn.pt"),
        description="small residual CNN for scikit-learn digits (embedded default)",
        extra={"default_data": "digits"},
    ),
    **{f"resnet{d}-cifar10": _cifar_resnet(d) for d in (20, 32, 44, 56)},
}

DEFAULT_MODEL = "digits-cnn"
