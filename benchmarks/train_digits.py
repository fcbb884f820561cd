"""Train the embedded digits CNN and (with --save) write the committed checkpoint.

    python benchmarks/train_digits.py [--seed 0] [--save models/weights/digits_cnn.pt]
"""

from __future__ import annotations

import argparse

import torch
from hawq_onnx.models.digits_cnn import train
from hawq_onnx.models.registry import ZOO

from hawq_onnx.io.atomic import write_with
from hawq_onnx.sources.data import load_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ds = load_data("digits", ZOO["digits-cnn"])
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    result = train(t(ds.train.x), t(ds.train.y), t(ds.test.x), t(ds.test.y), seed=args.seed)
    print(f"digits-cnn seed {args.seed}: test top-1 {100 * result.test_accuracy:.2f} % "
          f"in {result.seconds:.1f} s on {torch.get_num_threads()} threads")
    if args.save:
        write_with(args.save, lambda p: torch.save(result.model.state_dict(), p))
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
