"""Model sources besides the zoo and FILE.py:factory: ``hf:DIR`` (a local Hugging Face folder),
``torchvision:NAME`` and ``timm:NAME`` with keyword arguments, and a float ONNX file. Their
packages are optional: what does not import here is tested through its one-line error."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import hawq_onnx as hq
from hawq_onnx.core.model_inputs import InputSpec, Signature
from hawq_onnx.errors import HawqError
from hawq_onnx.sources import model_sources
from hawq_onnx.sources.model import load_model
from hawq_onnx.sources.model_sources import parse_value, split_spec
from hawq_onnx.sources.onnx_model import signature

ROOT = Path(__file__).resolve().parents[1]
# Random weights: these are about mechanics. Few iterations and probes keep them quick.
FAST = dict(batches=1, batch_size=8, trace_tol=0.2, max_iter=5, eig_tol=0.05, max_probes=8, sketch=0)


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # absent, or a build that does not fit this torch (the registry's torchvision)
        return False


HAS_TRANSFORMERS = _imports("transformers")
HAS_TORCHVISION = _imports("torchvision")
HAS_TIMM = HAS_TORCHVISION and _imports("timm")
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers does not import")


# --- the spec syntax -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("10", 10), ("-3", -3), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True),
                                         ("False", False), ("none", None), ("'10'", "10"), ('"a,b"', "a,b"),
                                         ("eager", "eager"), ("", "")])
def test_values_are_typed(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_specs_split_into_source_name_and_keywords(tmp_path):
    assert split_spec("torchvision:resnet18,num_classes=10,progress=false") == (
        "torchvision", "resnet18", {"num_classes": 10, "progress": False})
    assert split_spec("timm:resnet18") == ("timm", "resnet18", {})
    assert split_spec("hf:some/dir,num_labels=4,task=sequence-classification") == (
        "hf", "some/dir", {"num_labels": 4, "task": "sequence-classification"})
    odd = tmp_path / "a,b"
    odd.mkdir()
    assert split_spec(f"hf:{odd}") == ("hf", str(odd), {})  # an existing folder is taken whole
    for other in ("digits-cnn", "models/x.py:make", "pkg.mod:make", "model.onnx"):
        assert split_spec(other) is None


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet18,num_classes", "'num_classes' is not KEY=VALUE"),
    ("torchvision:resnet18,=3", "is not KEY=VALUE"),
    ("torchvision:resnet18,a=1,a=2", "keyword 'a' is given twice"),
    ("timm:", "names no model"),
    ("hf:", "names no folder"),
])
def test_bad_syntax_is_one_line(spec, message):
    with pytest.raises(HawqError, match=message) as err:
        load_model(spec)
    assert "\n" not in str(err.value)


def test_factories_take_keywords(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def make(width=8, bias=True):\n"
        "    m = nn.Sequential(nn.Conv2d(1, width, 3, bias=bias), nn.Flatten(), nn.Linear(width * 16, 3))\n"
        "    m.input_shape = (1, 6, 6)\n"
        "    return m\n")
    loaded = load_model(f"{tmp_path / 'net.py'}:make,width=4,bias=false")
    assert loaded.module[0].out_channels == 4 and loaded.module[0].bias is None
    assert loaded.spec.factory()[0].out_channels == 4
    with pytest.raises(HawqError, match="takes no keyword 'depth'"):
        load_model(f"{tmp_path / 'net.py'}:make,depth=3")


# --- torchvision and timm: built where they import, one-line errors where they do not ---------------

@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision does not import beside this torch")
def test_torchvision_model_with_keywords():
    loaded = load_model("torchvision:resnet18,num_classes=10", input_shape=(3, 32, 32))
    assert loaded.module.fc.out_features == 10 and loaded.spec.mean is not None
    with pytest.raises(HawqError, match="torchvision has no model 'resnet19'"):
        load_model("torchvision:resnet19")
    with pytest.raises(HawqError, match="takes no keyword 'depth'"):
        load_model("torchvision:resnet18,depth=3")


@pytest.mark.skipif(not HAS_TIMM, reason="timm does not import beside this torch")
def test_timm_model_with_keywords():
    loaded = load_model("timm:resnet18,num_classes=10", input_shape=(3, 32, 32))
    assert loaded.module.get_classifier().out_features == 10
    with pytest.raises(HawqError, match="timm has no model"):
        load_model("timm:no_such_net")


@pytest.mark.parametrize("source, extra", [("torchvision", "vision"), ("timm", "vision"), ("hf", "hf")])
def test_missing_package_is_one_line(source, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers" if source == "hf" else source, None)  # import fails
    (tmp_path / "config.json").write_text("{}")
    name = tmp_path if source == "hf" else "resnet18"
    with pytest.raises(HawqError, match=rf"needs the Python package \w+, but it is not installed: "
                                        rf"pip install 'hawq-onnx\[{extra}\]'"):
        load_model(f"{source}:{name}")


def test_broken_package_says_why(monkeypatch):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist\n(and a long traceback)")
    monkeypatch.setattr(model_sources.importlib, "import_module", broken)
    with pytest.raises(HawqError, match=r"torchvision, which is installed but does not import \(RuntimeError: "
                                        r"operator torchvision::nms does not exist\)") as err:
        load_model("torchvision:resnet18")
    assert "\n" not in str(err.value)


def test_cli_reports_bad_specs_in_one_line():
    r = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "export", "--model", "torchvision:resnet18,oops",
                        "--out", "never.onnx"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "is not KEY=VALUE" in r.stderr and "Traceback" not in r.stderr


# --- hf:DIR ----------------------------------------------------------------------------------------

def _bert_folder(root: Path, **extra) -> Path:
    from transformers import BertConfig

    folder = root / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
               num_labels=4, max_position_embeddings=64, architectures=["BertForSequenceClassification"],
               **extra).save_pretrained(folder)
    return folder


def _tokens(n: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.int64), "labels": ids[:, 0] % 4}


@needs_transformers
def test_hf_text_model_takes_its_signature_from_the_data(tmp_path, caplog):
    folder = _bert_folder(tmp_path)
    data_shape = Signature((InputSpec("input_ids", (12,), "int64"), InputSpec("attention_mask", (12,), "int64")),
                           "keyword")
    with caplog.at_level("WARNING"):
        loaded = load_model(f"hf:{folder}", data_shape=data_shape)
    assert "random initialisation" in caplog.text and loaded.weights is None
    assert loaded.input_shape == data_shape
    again = load_model(f"hf:{folder}", data_shape=data_shape).module.state_dict()  # every stage: the same model
    assert all(torch.equal(v, again[k]) for k, v in loaded.module.state_dict().items())
    assert loaded.module.config._attn_implementation == "eager"  # double backward on CPU needs it
    # a sequence length as the input shape, else a default capped by the position embeddings
    assert load_model(f"hf:{folder}", input_shape=(10,)).input_shape.inputs[0].shape == (10,)
    assert load_model(f"hf:{folder}").input_shape.inputs[1] == InputSpec("attention_mask", (64,), "int64")
    try:
        sdpa = load_model(f"hf:{folder},attn_implementation=sdpa,num_labels=3", input_shape=(8,)).module
    except HawqError as err:  # transformers before 4.41 has no SDPA for BERT: the override still reached it
        assert "does not support an attention implementation" in str(err) and "\n" not in str(err)
    else:
        assert sdpa.config._attn_implementation == "sdpa" and sdpa.classifier.out_features == 3


@needs_transformers
@pytest.mark.slow
def test_hf_text_model_is_analysed(tmp_path):
    folder = _bert_folder(tmp_path)
    sens = hq.analyze(f"hf:{folder}", [_tokens(8, 8)], **FAST)
    names = [layer.name for layer in sens.layers]
    assert "classifier" in names and "bert.encoder.layer.1.output.dense" in names


@needs_transformers
def test_hf_weights_load_and_export_keeps_names(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    folder = _bert_folder(tmp_path)
    torch.manual_seed(0)
    original = BertForSequenceClassification(BertConfig.from_pretrained(folder))
    original.save_pretrained(folder)
    loaded = load_model(f"hf:{folder}", input_shape=(6,))
    assert loaded.weights == str(folder / "model.safetensors")
    torch.testing.assert_close(loaded.module.classifier.weight, original.classifier.weight)
    exported = hq.export(f"hf:{folder}", data=[_tokens(4, 6)])
    assert [i.name for i in exported.model.graph.input] == ["input_ids", "attention_mask"]
    assert exported.model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64


@needs_transformers
@pytest.mark.parametrize("suffix, message", [
    (",no_such_setting=1", "BertConfig has no setting no_such_setting"),
    (",class=NoSuchModel", "has no model class 'NoSuchModel'"),
    (",task=translation", "unknown task 'translation'"),
    (",class=BertModel,task=sequence-classification", "give class= or task=, not both"),
])
def test_hf_bad_keywords_are_one_line(tmp_path, suffix, message):
    folder = _bert_folder(tmp_path)
    with pytest.raises(HawqError, match=message) as err:
        load_model(f"hf:{folder}{suffix}", input_shape=(8,))
    assert "\n" not in str(err.value)


@needs_transformers
def test_hf_folder_errors(tmp_path):
    with pytest.raises(HawqError, match="does not exist"):
        load_model(f"hf:{tmp_path / 'absent'}")
    with pytest.raises(HawqError, match="has no config.json"):
        load_model(f"hf:{tmp_path}")
    from transformers import ViTConfig

    ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32).save_pretrained(tmp_path / "vit")
    with pytest.raises(HawqError, match="names no architectures; add ,task=sequence-classification"):
        load_model(f"hf:{tmp_path / 'vit'}")


@needs_transformers
@pytest.mark.slow
def test_hf_vision_model_is_analysed(tmp_path):
    from transformers import ViTConfig

    folder = tmp_path / "vit"
    ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=64, num_labels=3, architectures=["ViTForImageClassification"]).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}')
    loaded = load_model(f"hf:{folder}")
    assert loaded.input_shape == (3, 16, 16) and loaded.spec.mean == (0.5, 0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=g)
    sens = hq.analyze(f"hf:{folder}", (x, torch.arange(16) % 3), **FAST)
    assert sens.layers[0].name == "vit.embeddings.patch_embeddings.projection"


@needs_transformers
@pytest.mark.parametrize("kind", ["resnet", "convnext", "mobilenet_v2"])
def test_hf_vision_configs_give_their_image_shape(tmp_path, kind):
    import transformers

    configs = {
        "resnet": ("ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
                   "ResNetForImageClassification", (3, 224, 224)),
        "convnext": ("ConvNextConfig", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32),
                     "ConvNextForImageClassification", (3, 32, 32)),
        "mobilenet_v2": ("MobileNetV2Config", dict(depth_multiplier=0.35, image_size=32),
                         "MobileNetV2ForImageClassification", (3, 32, 32)),
    }
    config_cls, kwargs, arch, shape = configs[kind]
    getattr(transformers, config_cls)(num_labels=5, architectures=[arch], **kwargs).save_pretrained(tmp_path)
    loaded = load_model(f"hf:{tmp_path}")
    assert loaded.input_shape == shape and type(loaded.module).__name__ == arch


# --- a float ONNX file ------------------------------------------------------------------------------

def _onnx2torch_imports() -> bool:
    from hawq_onnx.sources.onnx_model import import_onnx2torch

    try:
        import_onnx2torch()
        return True
    except HawqError:
        return False


def test_onnx_file_is_the_model(tmp_path):
    path = hq.export("digits-cnn").save(tmp_path / "d.onnx")
    before = sys.modules.get("torchvision")
    if not _onnx2torch_imports():
        with pytest.raises(HawqError, match=r"needs the Python package onnx2torch.*hawq-onnx\[onnx-input\]"):
            load_model(str(path))
        return
    assert sys.modules.get("torchvision") is before  # the placeholder lived for the import only
    loaded = load_model(str(path))
    assert loaded.input_shape == (1, 8, 8) and loaded.weights == str(path)
    zoo = load_model("digits-cnn")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), zoo.module(x), atol=1e-4, rtol=1e-4)
    sens = hq.analyze(str(path), "digits", batches=1, batch_size=64, trace_tol=0.2, max_iter=20, max_probes=8,
                      sketch=0)
    assert len(sens.layers) == 6


def _tiny_onnx(path: Path, op: str, inputs: list, extra_inputs: tuple = ()) -> Path:
    node = helper.make_node(op, [i.name for i in inputs] + list(extra_inputs), ["y"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.skipif(not _onnx2torch_imports(), reason="onnx2torch does not import")
def test_onnx_operator_it_cannot_convert_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    path = _tiny_onnx(tmp_path / "h.onnx", "Hardmax", [x])
    with pytest.raises(HawqError, match=r"onnx2torch cannot convert the ONNX operator Hardmax \(opset \d+\)") as err:
        load_model(str(path))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not _onnx2torch_imports() or HAS_TORCHVISION, reason="needs onnx2torch without torchvision")
def test_onnx_torchvision_operator_is_named(tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 5])
    path = _tiny_onnx(tmp_path / "nms.onnx", "NonMaxSuppression", [boxes, scores])
    with pytest.raises(HawqError, match="uses the ONNX operator NonMaxSuppression, which onnx2torch converts with "
                                        "torchvision"):
        load_model(str(path))


@pytest.mark.skipif(not _onnx2torch_imports(), reason="onnx2torch does not import")
def test_onnx_dynamic_dimensions_come_from_the_data(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])
    path = _tiny_onnx(tmp_path / "relu.onnx", "Relu", [x])
    with pytest.raises(HawqError, match=r"input x has dynamic dimensions \(N, \?\)"):
        load_model(str(path))
    assert load_model(str(path), data_shape=(7,)).input_shape == (7,)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])
    two = onnx.load(_tiny_onnx(tmp_path / "two.onnx", "Add", [x, ids]))
    given = Signature((InputSpec("ids", (3,), "int64"), InputSpec("x", (2,), "float32")), "keyword")
    assert signature(tmp_path / "two.onnx", two, given) == Signature(
        (InputSpec("x", (2,), "float32"), InputSpec("ids", (3,), "int64")), "keyword")
    with pytest.raises(HawqError, match="takes 2 inputs"):
        signature(tmp_path / "two.onnx", two, (2,))
