"""How default `analyze` time grows with depth and width (issue 24's table).

    python benchmarks/bench_analyze_depth.py [--models resnet20,resnet32,resnet44,resnet56,resnet18,mobilenetv2]
        [--data ../shared/data/cifar10] [--weights20 ../shared/models/resnet20-12fca82f.th]

Every model goes through ``hq.analyze`` (one batch of 256, decision stopping) settled for the
plans ``--settle-for`` names (default: 13x with 4-bit activations, what ``quantize --budget 13x``
asks; ``--a-bits 4,8 --settle-for 8x,13x`` is analyze's own default), one after the other in
this process, 2 threads. The CIFAR ResNets see CIFAR-10 training images; ResNet20 has its trained
weights, ResNet32/44/56 a fixed-seed random initialisation (the zoo has no weights for them).
torchvision and timm do not import beside this machine's CPU torch, so the ImageNet-shaped rows
are Hugging Face models from local configs with random weights on synthetic images, labelled by
the float model's own top-1, sized for a 2-core CPU: ResNet18's depth (basic blocks 2-2-2-2) at
half width (32-256) and 3x32x32, and MobileNetV2 at width 0.5 and 3x64x64 (transformers has no
MobileNetV3). Reported per model: quantizable
layers, parameters, the analysis's seconds and its products (probes and sketches).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

import hawq_onnx as hq

CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56")


def _hf(name: str, root: Path) -> tuple[str, torch.Tensor]:
    import transformers as tf

    if name == "resnet18":
        config = tf.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2],
                                 layer_type="basic", num_labels=10, architectures=["ResNetForImageClassification"])
        size = 32
    else:
        config = tf.MobileNetV2Config(image_size=64, depth_multiplier=0.5, num_labels=10,
                                      architectures=["MobileNetV2ForImageClassification"])
        size = 64
    config.save_pretrained(root / name)
    x = torch.randn(256, 3, size, size, generator=torch.Generator().manual_seed(0))
    return f"hf:{root / name}", x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,resnet32,resnet44,resnet56,resnet18,mobilenetv2")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--weights20", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--settle-for", default="13x")
    ap.add_argument("--a-bits", default="4")
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.ERROR)
    a_bits = tuple(int(b) for b in args.a_bits.split(","))
    question = dict(settle_for=tuple(args.settle_for.split(",")), settle_allocation=hq.AllocateOptions(a_bits=a_bits))
    print(f"torch {torch.__version__}, 2 threads; analyze settled for {args.settle_for} with a_bits {args.a_bits}")
    print("| model | input | layers | parameters | analyze s | products | s per layer | settled |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name in CIFAR:
                torch.manual_seed(0)
                model, data = f"{name}-cifar10", f"cifar10:{args.data}"
                weights = args.weights20 if name == "resnet20" else None
                shape = "3x32x32"
            else:
                (model, data), weights = _hf(name, Path(tmp)), None
                shape = "x".join(map(str, data.shape[1:]))
            start = time.perf_counter()
            report = hq.analyze(model, data, weights=weights, **question)
            seconds = time.perf_counter() - start
            layers = report.layers
            products = sum(layer.trace_probes + layer.act_trace_probes for layer in layers) \
                + 2 * 16 * len(report.settings["sketched"])
            print(f"| {name}{'' if weights else ' (random)'} | {shape} | {len(layers)} | "
                  f"{sum(layer.params for layer in layers):,} | {report.seconds:.1f} ({seconds:.1f} with loading) | "
                  f"{products} | {report.seconds / len(layers):.2f} | {report.settings.get('settled')} |", flush=True)


if __name__ == "__main__":
    main()
