"""Models with several inputs: named (dict batches, ``model(**x)``), positional (``model(*x)``),
integer inputs (token ids, masks), and outputs that are structures with ``logits``. Every stage
runs on them, and the exported ONNX model takes every input under its own name and type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import hawq_onnx as hq
from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputSpec, Signature
from hawq_onnx.sources.model import load_model
from hawq_onnx.sources.user_data import LOSS_WITHOUT_LABELS

FAST_ANALYSIS = dict(batches=1, batch_size=128, trace_tol=0.2, max_iter=20, sketch=0)


class ImageAndTokens(nn.Module):
    """An image branch and a token branch (integer ids and a mask), joined for 10 classes.
    Random weights: the tests are about mechanics, not accuracy."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.embed = nn.Embedding(20, 16)
        self.text = nn.Linear(16, 16)
        self.head = nn.Linear(8 * 4 + 16, 10)

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(image)), 2).flatten(1)
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(tokens) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(torch.cat([a, torch.relu(self.text(pooled))], 1))


@dataclass
class Output:
    """What a Hugging Face model returns: a structure with ``logits``."""

    logits: torch.Tensor


class StructuredOutput(ImageAndTokens):
    def forward(self, image, tokens, mask):  # type: ignore[override]
        return Output(super().forward(image, tokens, mask))


def _arrays(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 20, (n, 6), generator=g)
    return {"image": torch.randn(n, 1, 8, 8, generator=g), "tokens": tokens,
            "mask": (torch.rand(n, 6, generator=g) > 0.2).long(), "labels": tokens[:, 0] % 10}


class DictSamples(Dataset):
    def __init__(self, n: int, seed: int, labels: bool = True) -> None:
        self.arrays = _arrays(n, seed)
        if not labels:
            del self.arrays["labels"]

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


@pytest.fixture(scope="module")
def staged():
    torch.manual_seed(0)
    model = ImageAndTokens()
    train, test = DataLoader(DictSamples(384, 0), batch_size=64), DataLoader(DictSamples(192, 1), batch_size=64)
    sens = hq.analyze(model, train, **FAST_ANALYSIS)
    plan = hq.allocate(sens, "4x", a_bits=(8,))
    qmodel = hq.finetune(model, plan, train, eval_data=test, steps=4)
    exported = hq.export(qmodel)
    float_onnx = hq.export(model, data=test)
    report = hq.validate(float_onnx, exported, test, reference=qmodel, runs=2, warmup=0, batch_sizes=(1, 4))
    return model, test, sens, qmodel, exported, float_onnx, report


# --- the forms, leaf by leaf -----------------------------------------------------------------

def test_shapes_of_the_three_forms():
    x = torch.zeros(4, 3, 8, 8)
    assert model_inputs.shape_of(x) == (3, 8, 8)  # one float tensor: the plain tuple every image model has
    tokens = model_inputs.shape_of(torch.zeros(4, 16, dtype=torch.int64))
    assert tokens == Signature((InputSpec("input", (16,), "int64"),), "single")
    named = model_inputs.shape_of({"ids": torch.zeros(4, 16, dtype=torch.int64), "mask": torch.ones(4, 16).bool()})
    assert named.form == "keyword" and named.names == ("ids", "mask") and named.inputs[1].dtype == "bool"
    positional = model_inputs.shape_of((x, np.zeros((4, 2), np.float32)))
    assert positional.form == "positional" and positional.names == ("input_0", "input_1")
    for shape in (tokens, named, positional, (3, 8, 8)):
        assert model_inputs.shape_from_json(model_inputs.shape_json(shape)) == shape


def test_take_concat_and_examples_keep_the_form():
    x = {"a": np.arange(10.0, dtype=np.float32).reshape(5, 2), "b": np.arange(5)}
    part = model_inputs.take(x, slice(1, 3))
    assert list(part) == ["a", "b"] and model_inputs.count(part) == 2 and part["b"].tolist() == [1, 2]
    joined = model_inputs.concat([part, model_inputs.take(x, np.array([4]))])
    assert joined["b"].tolist() == [1, 2, 4]
    pair = model_inputs.as_torch((x["a"], x["b"]))
    assert isinstance(pair, tuple) and model_inputs.count(model_inputs.take(pair, torch.tensor([True, False] * 2 + [True]))) == 3
    example = model_inputs.example(model_inputs.shape_of({k: torch.from_numpy(v) for k, v in x.items()}), 3)
    assert example["a"].dtype == torch.float32 and example["b"].dtype == torch.int64 and int(example["b"].min()) == 1


def test_scores_of_structured_outputs():
    t = torch.ones(2, 3)
    assert model_inputs.scores(t) is t
    assert model_inputs.scores(Output(t)) is t
    assert model_inputs.scores({"logits": t, "loss": None}) is t
    assert model_inputs.scores((t, torch.zeros(1))) is t


def test_a_signature_read_from_a_bad_record_is_one_error():
    with pytest.raises(hq.HawqError, match="malformed"):
        Signature.from_json({"form": "keyword", "inputs": [{"name": "a"}]})
    with pytest.raises(hq.HawqError, match="malformed"):
        Signature.from_json({"form": "sideways", "inputs": [{"name": "a", "shape": [1], "dtype": "int64"}]})


# --- every stage on a model with named integer and float inputs --------------------------------

def test_every_stage_on_dict_batches(staged):
    model, test, sens, qmodel, exported, float_onnx, report = staged
    assert [layer.name for layer in sens.layers] == ["conv", "text", "head"]
    assert sens.settings["loss"] == "cross_entropy"  # the dicts' "labels" are the labels, not an input
    assert qmodel.plan.calibrated and qmodel.calibration_x is not None and set(qmodel.calibration_x) == {
        "image", "tokens", "mask"}
    batch = next(iter(test))
    with torch.no_grad():
        assert qmodel(batch["image"], batch["tokens"], batch["mask"]).shape == (64, 10)
    for proto in (exported.model, float_onnx.model):
        inputs = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
        assert inputs == {"image": onnx.TensorProto.FLOAT, "tokens": onnx.TensorProto.INT64,
                          "mask": onnx.TensorProto.INT64}
    assert exported.grids  # the 8-bit tensors between layers were named in PyTorch
    assert report.samples == 192 and report.input_name == "image, tokens, mask"
    assert report.fake_quant is not None and report.fake_quant.top1 >= 0.99
    assert report.quantized.latency is not None and set(report.quantized.speedup) == {1, 4}


def test_the_float_onnx_computes_what_pytorch_computes(staged):
    model, test, *_ , float_onnx, _ = staged
    batch = next(iter(test))
    session = ort.InferenceSession(float_onnx.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in batch.items() if k != "labels"}
    got = session.run(None, feed)[0]
    with torch.no_grad():
        want = model.eval()(batch["image"], batch["tokens"], batch["mask"]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_quantize_and_package_a_model_with_named_inputs(staged, tmp_path):
    model, test, *_ , exported, _, report = staged
    options = hq.QuantizeOptions(analyze=hq.AnalyzeOptions(**FAST_ANALYSIS), finetune=hq.FinetuneOptions(steps=2),
                                 validate=hq.ValidateOptions(runs=0))
    result = hq.quantize(model, DataLoader(DictSamples(256, 7), batch_size=64), eval_data=test, budget="4x",
                         options=options)
    assert result.fake_quant_agreement >= 0.99 and result.weight_ratio >= 4.0
    bundle = hq.package(exported, tmp_path / "bundle", report=report)
    inputs = {i["name"]: i["type"] for i in bundle.manifest["model"]["inputs"]}
    assert inputs == {"image": "float32", "tokens": "int64", "mask": "int64"} and bundle.manifest["check"][
        "bitwise_equal"]


def test_dict_batches_without_labels_and_dicts_of_arrays():
    torch.manual_seed(0)
    model = ImageAndTokens()
    sens = hq.analyze(model, DataLoader(DictSamples(256, 2, labels=False), batch_size=64), **FAST_ANALYSIS)
    assert sens.settings["loss"] == LOSS_WITHOUT_LABELS
    arrays = {k: v.numpy() for k, v in _arrays(256, 3).items()}  # held in memory: a fifth held out
    plan = hq.allocate(sens, "4x", a_bits=(8,))
    qmodel = hq.finetune(model, plan, arrays, steps=2)
    assert qmodel.eval_samples == 51 and qmodel.plan.calibration["data"].startswith("python:dict")


def test_positional_inputs_through_input_fn():
    torch.manual_seed(0)
    model = ImageAndTokens()
    loader = DataLoader(DictSamples(192, 4), batch_size=64)
    sens = hq.analyze(model, loader, input_fn=lambda b: (b["image"], b["tokens"], b["mask"]), **FAST_ANALYSIS)
    named = hq.analyze(model, loader, **FAST_ANALYSIS)
    assert [la.trace for la in sens.layers] == [la.trace for la in named.layers]
    exported = hq.export(model, data=loader, input_fn=lambda b: (b["image"], b["tokens"], b["mask"]))
    assert [i.name for i in exported.model.graph.input] == ["input_0", "input_1", "input_2"]


def test_structured_outputs_export_their_logits():
    torch.manual_seed(0)
    model = StructuredOutput()
    loader = DataLoader(DictSamples(128, 5), batch_size=64)
    sens = hq.analyze(model, loader, **FAST_ANALYSIS)
    exported = hq.export(model, data=loader)
    assert [o.name for o in exported.model.graph.output] == ["logits"]
    names = {i.name for i in exported.model.graph.initializer}
    assert "head.weight" in names  # named as in the user's model, not under the export's wrapper
    assert len(sens.layers) == 3


def test_an_iterable_dataset_of_dicts_is_streamed():
    class Stream(IterableDataset):
        def __iter__(self):
            arrays = _arrays(160, 6)
            for i in range(160):
                yield {k: v[i] for k, v in arrays.items()}

    torch.manual_seed(0)
    sens = hq.analyze(ImageAndTokens(), Stream(), **FAST_ANALYSIS)
    assert sens.settings["samples"] == 128


def test_data_in_another_form_than_the_model_takes_is_one_error():
    digits = load_model("digits-cnn").module
    batches = [{"pixels": torch.zeros(4, 1, 8, 8), "labels": torch.zeros(4, dtype=torch.long)}]
    with pytest.raises(hq.HawqError, match="keyword argument 'pixels'.*pass input_fn"):
        hq.analyze(digits, batches, **FAST_ANALYSIS)
    digits.input_shape = (1, 8, 8)  # declared: the data's form is checked against it
    with pytest.raises(hq.HawqError, match=r"the data gives inputs pixels .* but the model takes \(1, 8, 8\)"):
        hq.analyze(digits, batches, **FAST_ANALYSIS)
    with pytest.raises(hq.HawqError, match="does not run on inputs image"):
        hq.analyze(ImageAndTokens(), [{"image": torch.zeros(4, 1, 8, 8), "labels": torch.zeros(4).long()}],
                   **FAST_ANALYSIS)
    with pytest.raises(hq.HawqError, match="uint8"):
        hq.analyze(digits, [(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4).long())], **FAST_ANALYSIS)


# --- npz files with several named arrays (the command line's data) ------------------------------

TOKEN_MODEL = '''
import torch
import torch.nn as nn


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        w = attention_mask.unsqueeze(-1).to(torch.float32)
        return self.head(torch.relu(self.fc((self.embed(input_ids) * w).sum(1) / w.sum(1).clamp(min=1.0))))


def make():
    torch.manual_seed(0)
    return TokenNet()
'''


@pytest.fixture()
def token_files(tmp_path):
    (tmp_path / "tokennet.py").write_text(TOKEN_MODEL)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, (300, 12))
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=(rng.random((300, 12)) > 0.2).astype(np.int64),
             y=ids[:, 0] % 4)
    return tmp_path


def test_npz_named_arrays_are_the_model_inputs(token_files):
    from hawq_onnx.sources.data import load_data, sample_shape

    source = f"npz:{token_files / 'tokens.npz'}"
    shape = sample_shape(source)
    assert shape == Signature((InputSpec("input_ids", (12,), "int64"), InputSpec("attention_mask", (12,), "int64")),
                              "keyword")
    loaded = load_model(f"{token_files / 'tokennet.py'}:make", input_shape=None, data_shape=shape)
    data = load_data(source, loaded.spec)
    assert len(data.train) == 240 and len(data.test) == 60  # the fixed stratified fifth
    assert data.train.x["input_ids"].dtype == np.int64 and set(data.calib.x) == {"input_ids", "attention_mask"}
    sens = hq.analyze(f"{token_files / 'tokennet.py'}:make", source, **FAST_ANALYSIS)
    assert [la.name for la in sens.layers] == ["fc", "head"]


def test_npz_arrays_that_do_not_fit_the_model_are_one_error(token_files):
    rng = np.random.default_rng(1)
    np.savez(token_files / "short.npz", input_ids=rng.integers(0, 30, (40, 12)), y=np.zeros(40, np.int64))
    with pytest.raises(hq.HawqError, match="does not run on inputs input_ids"):
        hq.analyze(f"{token_files / 'tokennet.py'}:make", f"npz:{token_files / 'short.npz'}", **FAST_ANALYSIS)
    with pytest.raises(hq.HawqError, match="must hold arrays 'x' and 'y'"):
        hq.analyze("digits-cnn", f"npz:{token_files / 'tokens.npz'}", **FAST_ANALYSIS)
