"""Every stage on the kinds of model users bring (issue 23's benchmark), through the Python API.

    python benchmarks/bench_model_zoo.py [--models bert,vit,mobilenetv2,resnet18,onnx] [--json out.json]

Each model runs in its own process (peak memory is that process's): a Hugging Face BERT-style
sequence classifier on token ids, a ViT, a MobileNetV2 and a ResNet18-shaped ResNet, all built
from local configs (``hf:DIR``) with random weights and reduced widths and resolution so that a
2-core CPU runs them in minutes, and the digits CNN given only as a float ONNX file. Nothing
downloads. The data is synthetic and unlabelled, so the float model's own top-1 stands in for
labels: accuracies are agreement with the float model, and the mechanics are what is measured
(stages, compression at 8x, the exported file against its PyTorch reference, integer kernels,
latency, time per stage, peak memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("bert", "vit", "mobilenetv2", "resnet18", "onnx")
SAMPLES = 384


def _hf_folder(name: str, root: Path) -> tuple[str, object]:
    """A local Hugging Face folder (config only: random weights) and synthetic unlabelled data."""
    import torch
    import transformers as tf

    g = torch.Generator().manual_seed(0)
    if name == "bert":
        config = tf.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=64, num_labels=4,
                               architectures=["BertForSequenceClassification"])
        ids = torch.randint(0, 1000, (SAMPLES, 32), generator=g)
        data = [{"input_ids": ids[i:i + 64], "attention_mask": torch.ones(len(ids[i:i + 64]), 32, dtype=torch.long)}
                for i in range(0, SAMPLES, 64)]
    else:
        if name == "vit":
            config = tf.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=128, num_labels=10,
                                  architectures=["ViTForImageClassification"])
        elif name == "mobilenetv2":
            config = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10,
                                          architectures=["MobileNetV2ForImageClassification"])
        else:  # ResNet18's depth (basic blocks 2-2-2-2) at a quarter of its width
            config = tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                                     layer_type="basic", num_labels=10, architectures=["ResNetForImageClassification"])
        x = torch.randn(SAMPLES, 3, 32, 32, generator=g)
        data = [x[i:i + 64] for i in range(0, SAMPLES, 64)]
    folder = root / name
    config.save_pretrained(folder)
    return f"hf:{folder}", data


def _onnx_model(root: Path) -> tuple[str, object]:
    import hawq_onnx as hq
    from hawq_onnx.sources.data import load_data
    from hawq_onnx.sources.model import load_model

    path = root / "digits.float.onnx"
    hq.export("digits-cnn").save(path)
    data = load_data("digits", load_model("digits-cnn").spec)
    return str(path), data.train.x


def run_one(name: str) -> dict:
    import hawq_onnx as hq

    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        model, data = _onnx_model(Path(tmp)) if name == "onnx" else _hf_folder(name, Path(tmp))
        times: dict[str, float] = {}

        def timed(stage: str, fn):
            start = time.perf_counter()
            out = fn()
            times[stage] = round(time.perf_counter() - start, 2)
            return out

        sens = timed("analyze", lambda: hq.analyze(model, data, batches=1, batch_size=64))
        plan = timed("allocate", lambda: hq.allocate(sens, "8x"))
        qmodel = timed("finetune", lambda: hq.finetune(model, plan, data, steps=20))
        exported = timed("export", lambda: hq.export(qmodel))
        float_onnx = timed("export float", lambda: hq.export(model, data=data))
        report = timed("validate", lambda: hq.validate(float_onnx, exported, data, reference=qmodel,
                                                       batch_sizes=(1, 64), runs=20))
    census = report.quantized.census
    return {"model": name, "layers": len(sens.layers), "weight_ratio": round(plan.totals["ratio"], 2),
            "file_ratio": round(report.float.file_bytes / report.quantized.file_bytes, 2),
            "agreement_with_reference": report.fake_quant.top1 if report.fake_quant else None,
            "agreement_with_float": report.quantized.agreement,
            "integer_layers": f"{census.count('integer')}/{len(census.layers)}",
            "speedup": {str(b): round(v, 2) for b, v in report.quantized.speedup.items()},
            "seconds": times, "hessian_products": sens.settings.get("hessian_products"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return 0
    rows = []
    for name in args.models.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"model": name, "error": tail})
        else:
            rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
