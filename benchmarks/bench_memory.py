"""Peak memory of `hq.quantize` against the size of the data set: streamed DataLoader vs arrays.

Each run is a child process (its own peak RSS, ru_maxrss) that quantizes a small CNN (random
weights: the mechanics are measured, not accuracy) on N synthetic 3x32x32 images with 10 classes,
generated per index by a torch Dataset, so the data set itself takes no memory until a stage
holds it. `stream` passes a DataLoader (every stage reads it batch by batch); `arrays` passes
the same samples as numpy arrays (held whole, as every source was before streaming).

    python benchmarks/bench_memory.py --samples 10000 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

SHAPE = (3, 32, 32)
CLASSES = 10


class Images(Dataset):
    """Class-dependent Gaussian images, generated from the index (the same sample on every pass)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.means = np.random.default_rng(0).normal(size=(CLASSES, *SHAPE)).astype(np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        label = i % CLASSES
        noise = np.random.default_rng(i).standard_normal(SHAPE, dtype=np.float32)
        return torch.from_numpy(self.means[label] + 2.0 * noise), label


class SmallCNN(nn.Module):
    input_shape = SHAPE

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def child(n: int, mode: str) -> dict:
    import hawq_onnx as hq

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = SmallCNN().eval()
    images = Images(n)
    if mode == "stream":
        data = DataLoader(images, batch_size=256)
    else:
        loader = DataLoader(images, batch_size=1024)
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in loader))
        data = (np.concatenate(xs), np.concatenate(ys))
    options = hq.QuantizeOptions(analyze=hq.AnalyzeOptions(batch_size=128, trace_tol=0.1, max_iter=20),
                                 allocate=hq.AllocateOptions(a_bits=(8,)),
                                 finetune=hq.FinetuneOptions(steps=20), validate=hq.ValidateOptions(runs=0))
    start = time.perf_counter()
    result = hq.quantize(model, data, budget="8x", options=options)
    return {"samples": n, "mode": mode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "eval_samples": result.report.samples, "fake_quant_agreement": result.fake_quant_agreement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--modes", nargs="+", default=["stream", "arrays"], choices=["stream", "arrays"])
    parser.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"{'samples':>8} {'mode':>7} {'peak RSS':>10} {'wall':>8} {'eval':>7} {'agree':>7}")
    for n in args.samples:
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), mode], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{n:>8} {mode:>7} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n:>8} {mode:>7} {r['peak_rss_mb']:>7} MB {r['seconds']:>6} s {r['eval_samples']:>7} "
                  f"{100 * r['fake_quant_agreement']:>6.2f}%")


if __name__ == "__main__":
    main()
