"""Attention models end to end (issue 23): separate q/k/v projections that read one tensor, and
Linear layers on token tensors (N, T, D).

A tiny ViT (patch Conv2d, two blocks of LayerNorm, q/k/v/out projections, hand-written
softmax(q k^T / sqrt(d)) v, a GELU MLP, a classifier head) and a tiny Hugging Face BERT (eager
attention, dict batches) go through analyze, allocate, finetune, export and validate: every
plan layer binds to its own node with its own bits, the file agrees with its PyTorch reference
and ONNX Runtime runs every layer on an integer kernel. Random weights: the tests are about
mechanics, not accuracy. Attention is hand-written (or HF ``eager``): PyTorch has no double
backward for the fused CPU attention kernel that the analysis needs.
"""

from __future__ import annotations

import math

import onnx
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import hawq_onnx as hq
from hawq_onnx.passes import onnx_simplify

FAST_ANALYSIS = dict(batches=1, batch_size=32, trace_tol=0.2, max_iter=20, sketch=0, max_probes=8)
SAMPLES = 320  # agreement is measured on this many held-out samples
MIN_AGREEMENT = 0.995
# Weight bits -> the ONNX types that may store them (8-bit: uint8 + 128 after a full-range input).
STORAGE = {2: {onnx.TensorProto.INT2}, 3: {onnx.TensorProto.INT4}, 4: {onnx.TensorProto.INT4},
           8: {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}}


class Block(nn.Module):
    """Pre-norm transformer block. ``k`` has no bias (as Whisper's): a bias-free Linear on tokens
    stays a MatMul in the file, the others become Gemms on the flattened tokens."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.norm1(x)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, d: int = 32, heads: int = 2, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 4, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch(x).flatten(2).transpose(1, 2) + self.pos)
        return self.head(self.norm(x).mean(1))


def _stages(model: nn.Module, train: DataLoader, test: DataLoader):
    sens = hq.analyze(model, train, **FAST_ANALYSIS)
    plan = hq.allocate(sens, "4x", a_bits=(8,))
    qmodel = hq.finetune(model, plan, train, eval_data=test, steps=2)
    exported = hq.export(qmodel)
    report = hq.validate(hq.export(model, data=test), exported, test, reference=qmodel, runs=0)
    return plan, qmodel, exported, report


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = TinyViT()
    x, y = torch.randn(256 + SAMPLES, 1, 8, 8), torch.randint(0, 10, (256 + SAMPLES,))
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32)
    test = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)
    return (model, test, *_stages(model, train, test))


def _check_bound_and_integer(plan, exported, report) -> None:
    layers = [lp.name for lp in plan.layers]
    assert list(exported.bits) == layers  # every plan layer found its node
    initializers = {i.name for i in exported.model.graph.initializer}
    assert {f"{name}.weight" for name in layers} <= initializers  # each with its own quantized weight
    assert not [n for n in exported.model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type == "Split"]
    assert report.fake_quant.samples == SAMPLES and report.fake_quant.top1 >= MIN_AGREEMENT
    census = report.quantized.census
    assert [k.layer for k in census.layers] == layers
    assert all(k.mode == "integer" for k in census.layers), [(k.layer, k.kernel) for k in census.layers]


def test_vit_q_k_v_bind_to_their_own_nodes_with_their_own_bits(vit):
    model, test, plan, qmodel, exported, report = vit
    _check_bound_and_integer(plan, exported, report)
    kernels = {k.layer: (k.op_type, k.kernel) for k in report.quantized.census.layers}
    assert kernels["blocks.0.q"] == ("Gemm", "QGemm")  # Linear + bias on tokens: a Gemm on (N*T, D)
    assert kernels["blocks.0.k"] == ("MatMul", "MatMulIntegerToFloat")  # bias-free: MatMul on (N, T, D)
    storage = {i.name: i.data_type for i in exported.model.graph.initializer}
    for lp in plan.layers:  # the file stores each projection in its plan's own width
        assert storage[f"{lp.name}.weight"] in STORAGE[lp.w_bits], lp.name
    assert len({plan.layer(f"blocks.{i}.{p}").w_bits for i in (0, 1) for p in "qkv"}) > 1  # really mixed


def test_linear_on_tokens_as_matmul_plus_add_runs_on_integer_kernels(vit, monkeypatch):
    """Where onnxsim leaves Linear + bias on tokens as MatMul + Add (its batched Gemm rewrite
    off), the layers bind and quantize as Gemm layers do, bias included."""
    model, test, plan, qmodel, *_ = vit
    monkeypatch.setattr(onnx_simplify, "SKIPPED_OPTIMIZERS",
                        (*onnx_simplify.SKIPPED_OPTIMIZERS, "fuse_matmul_add_bias_into_gemm_batched"))
    exported = hq.export(qmodel)
    ops = {n.op_type for n in exported.model.graph.node}
    assert "Gemm" in ops and "MatMul" in ops  # only the head (2-D input) is a Gemm
    report = hq.validate(hq.export(model, data=test), exported, test, reference=qmodel, runs=0)
    _check_bound_and_integer(plan, exported, report)
    assert {k.kernel for k in report.quantized.census.layers if k.op_type == "MatMul"} == {"MatMulIntegerToFloat"}


def test_a_layer_fused_away_is_one_line_error_naming_it(vit, monkeypatch):
    """onnxsim's fuse_qkv (q/k/v as one MatMul on a concatenated weight, then Split) is what
    issue 23 hit; the export refuses such a graph with what it holds instead."""
    *_, qmodel, _, _ = vit
    monkeypatch.setattr(onnx_simplify, "SKIPPED_OPTIMIZERS", ("fuse_attention", "fuse_gqa"))
    with pytest.raises(hq.HawqError) as info:
        hq.export(qmodel)
    message = str(info.value)
    assert "\n" not in message and "not found in the ONNX graph (blocks.0.q" in message
    assert "blocks.0.q: its transposed weight is columns 0:32 of" in message and "fused from several" in message


# --- a Hugging Face BERT with dict batches -----------------------------------------------------

class Tokens(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 8), generator=g)
        self.mask = torch.ones(n, 8, dtype=torch.long)
        self.mask[n // 2:, 6:] = 0  # half the sequences padded
        self.labels = self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def test_bert_every_projection_binds_and_runs_on_integer_kernels():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                     attn_implementation="eager")
    model = transformers.BertForSequenceClassification(config).eval()
    train, test = DataLoader(Tokens(256, 0), batch_size=32), DataLoader(Tokens(SAMPLES, 1), batch_size=64)
    plan, qmodel, exported, report = _stages(model, train, test)
    assert sum(".attention.self." in lp.name for lp in plan.layers) == 6
    _check_bound_and_integer(plan, exported, report)
    # transformers' own tracer names the tensors the export rounds between layers, so the
    # PyTorch reference has them too (plain torch.fx cannot trace a Hugging Face forward)
    assert len(exported.grids) >= 18 and not [w for w in exported.warnings if "cannot trace" in w]
    assert report.fake_quant.p99_steps < 3.0  # 4.5 steps when none of them was modelled
