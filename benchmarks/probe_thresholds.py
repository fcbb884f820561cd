"""How close a fine-tuned checkpoint's latent weights sit to their rounding thresholds, and what
flipping the nearest ones costs.

For each quantized layer: the share of latent weights within ``--band`` of a step of a decision
threshold (w/s half-way between two integers of the grid, so never a saturated weight beyond
the outermost level; ``2 * band`` if they were spread evenly). Then
top-1 of the fake-quant model after moving every weight of the chosen bit width by uniform noise
of at most ``--noise`` of its step, for ``--draws`` seeded draws: the integers nearest a
threshold flip. Session 9 ran it on ResNet20's 13x checkpoint (BENCHMARKS.md).

    python benchmarks/probe_thresholds.py --checkpoint runs/r20s2/quantized.pt
"""

from __future__ import annotations

import argparse

import torch

from hawq_onnx.qat.checkpoint import restore_quantized
from hawq_onnx.qat.fake_quant import quant_layers, quantize_model
from hawq_onnx.qat.finetune import evaluate
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="quantized.pt from finetune")
    ap.add_argument("--model", default="resnet20-cifar10")
    ap.add_argument("--weights", default="../shared/models/resnet20-12fca82f.th")
    ap.add_argument("--data", default="cifar10:../shared/data/cifar10")
    ap.add_argument("--band", type=float, default=0.01, help="distance to a threshold, in steps")
    ap.add_argument("--bits", type=int, default=2, help="perturb the weights of this width")
    ap.add_argument("--noise", type=float, default=0.02, help="largest move, in steps")
    ap.add_argument("--draws", type=int, default=4)
    args = ap.parse_args()

    loaded = load_model(args.model, args.weights)
    folded, plan = restore_quantized(loaded, args.checkpoint)
    qmodel = quantize_model(folded, plan).eval()
    layers = {name: q for name, q in quant_layers(qmodel).items() if q.weight_quant is not None}
    originals = {name: q.layer.weight.detach().clone() for name, q in layers.items()}
    steps = {name: q.weight_quant.channel_scale(originals[name].dim()).detach() for name, q in layers.items()}
    print(f"{'layer':18s} bits  within {args.band:g} step of a threshold")
    for name, q in layers.items():
        v = originals[name] / steps[name]
        # The nearest threshold between two levels of the grid: qmin + 0.5 ... qmax - 0.5.
        threshold = (v.floor() + 0.5).clamp(q.weight_quant.qmin + 0.5, q.weight_quant.qmax - 0.5)
        near = ((v - threshold).abs() < args.band).float().mean()
        print(f"{name:18s} {q.w_bits:4d}  {100 * float(near):5.1f} %")

    data = load_data(args.data, loaded.spec)
    print(f"top-1 as trained: {100 * evaluate(qmodel, data.test):.2f} %")
    for draw in range(args.draws):
        g = torch.Generator().manual_seed(draw)
        with torch.no_grad():
            for name, q in layers.items():
                if q.w_bits != args.bits:
                    continue
                w = originals[name]
                q.layer.weight.copy_(w + (torch.rand(w.shape, generator=g) - 0.5) * 2 * args.noise * steps[name])
        print(f"draw {draw}: {args.bits}-bit weights moved by up to {args.noise:g} step: "
              f"top-1 {100 * evaluate(qmodel, data.test):.2f} %")


if __name__ == "__main__":
    main()
