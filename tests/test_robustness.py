"""Bad input through every command: one line naming the problem, exit 2, nothing written, inputs untouched.

One table of cases (command line, exit status, message, and implicitly the outputs it names):
each runs in-process through click's CliRunner with a fresh, empty output folder, and then

- the exit status is the table's (2 for bad input; 1 only for the --max-drop gate),
- stderr ends with one ``error: ...`` line matching the table's message, with no traceback,
- no output named on the command line exists and the output folder is still empty (no
  temporary files, no folders made for nothing),
- every input file (the real artefacts and the broken ones) has the same bytes as before and no
  file appeared beside them.

A few cases also run as real processes, to show that nothing but that line reaches stderr.
The artefacts are the digits CNN's, built once for the module (``fuzz/seed_artifacts.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from seed_artifacts import Artifacts, copy_artifacts, sensitivity_report  # noqa: E402

OUTPUT_OPTIONS = {"--out", "--plan-out", "--json", "--report", "--plot", "--baseline-out"}

USER_MODELS = '''
import torch
import torch.nn as nn


def raises():
    raise RuntimeError("boom")


def not_a_module():
    return 42


class NoShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def no_shape():
    return NoShape()


class NoLayer(nn.Module):
    input_shape = (1, 8, 8)

    def forward(self, x):
        return torch.relu(x).flatten(1)[:, :10]


def no_layer():
    return NoLayer()


class BrokenForward(nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        raise ValueError("forward broke")


def broken_forward():
    return BrokenForward()


class WeightReadInForward(nn.Module):
    """Uses its conv's weight through F.conv2d: nothing reads conv.weight as a Conv input."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 36, 10)

    def forward(self, x):
        x = torch.nn.functional.conv2d(x, self.conv.weight.flip(-1), self.conv.bias)
        return self.fc(torch.relu(x).flatten(1))


def weight_read_in_forward():
    return WeightReadInForward()
'''


# --- the inputs ------------------------------------------------------------------------------

def _edit_onnx(src: Path, dst: Path, fn) -> None:
    model = onnx.load(str(src))
    fn(model)
    dst.write_bytes(model.SerializeToString())


def _set_first(model: onnx.ModelProto, suffix: str, value: float) -> None:
    for t in model.graph.initializer:
        if t.name.endswith(suffix) and t.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(t).copy()
            a.flat[0] = value
            t.CopyFrom(numpy_helper.from_array(a, t.name))
            return
    raise AssertionError(f"no float initializer ending in {suffix}")


def _first_dequantize_scale(model: onnx.ModelProto) -> str:
    """The scale of the file's first weight DequantizeLinear (the exporter names scales short)."""
    return next(n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".weight"))


def _json_variant(src: Path, dst: Path, fn) -> None:
    obj = json.loads(src.read_text())
    fn(obj)
    dst.write_text(json.dumps(obj))


def make_bad_inputs(b: Path, a: Artifacts) -> None:
    """Every broken input the table names, in ``b``."""
    b.mkdir()
    f = a.float_onnx.read_bytes()
    (b / "empty.onnx").write_bytes(b"")
    (b / "truncated.onnx").write_bytes(f[: len(f) // 2])
    (b / "text.onnx").write_text("not a model\n")

    def dangling(m):
        m.graph.node[0].input[0] = "nowhere"
    _edit_onnx(a.float_onnx, b / "checker.onnx", dangling)
    _edit_onnx(a.float_onnx, b / "nan.onnx", lambda m: _set_first(m, "weight", float("nan")))
    _edit_onnx(a.qdq_onnx, b / "inf_scale.onnx", lambda m: _set_first(m, _first_dequantize_scale(m), float("inf")))

    def dynamic(m):
        for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
            d.Clear()
            d.dim_param = "hw"
    _edit_onnx(a.float_onnx, b / "dynamic.onnx", dynamic)
    _edit_onnx(a.float_onnx, b / "no_shape.onnx", lambda m: m.graph.input[0].type.tensor_type.ClearField("shape"))

    def external(m):
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "weights.bin"
    _edit_onnx(a.float_onnx, b / "external.onnx", external)

    def other_model(m):  # another classifier: same output, but takes (N, 64)
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
        w = numpy_helper.from_array(np.zeros((64, 10), np.float32), "fc.weight")
        g = helper.make_graph([helper.make_node("MatMul", ["input", "fc.weight"], ["logits"])], "g", [x], [y], [w])
        m.CopyFrom(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    _edit_onnx(a.float_onnx, b / "other.onnx", other_model)
    _edit_onnx(a.float_onnx, b / "damaged.onnx", lambda m: [  # a worse model with the same interface
        t.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(t), t.name))
        for t in m.graph.initializer if t.name == "fc.weight"])
    os.mkfifo(b / "fifo")
    (b / "folder").mkdir()
    (b / "folder" / "notes.txt").write_text("not a bundle\n")
    with zipfile.ZipFile(b / "notes.zip", "w") as zf:
        zf.writestr("notes.txt", "not a bundle\n")

    state = torch.load(a.weights, weights_only=True)
    first = next(k for k in state if k.endswith("weight"))
    torch.save(state, b / "weights.pt")
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = {k: v.clone() for k, v in state.items()}
        bad[first].view(-1)[0] = value
        torch.save(bad, b / f"{name}.pt")
    torch.save(dict(list(state.items())[:-2]), b / "missing_keys.pt")
    torch.save({**state, first: torch.zeros(3, 3)}, b / "wrong_shape.pt")
    (b / "empty.pt").write_bytes(b"")
    raw = a.weights.read_bytes()
    (b / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (b / "text.pt").write_text("not a checkpoint")
    torch.save([1, 2, 3], b / "list.pt")
    ckpt = torch.load(a.quantized, weights_only=True)
    ckpt["state_dict"] = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    ckpt["state_dict"][first].view(-1)[0] = float("nan")
    torch.save(ckpt, b / "nan.quantized.pt")
    (b / "weights_link.pt").symlink_to(b / "weights.pt")

    np.savez(b / "wrong_shape.npz", x=np.zeros((20, 3, 32, 32), np.float32), y=np.zeros(20, np.int64))
    np.savez(b / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(b / "labels.npz", x=np.zeros((20, 1, 8, 8), np.float32), y=np.arange(20, dtype=np.int64))
    np.savez(b / "nan.npz", x=np.full((20, 1, 8, 8), np.nan, np.float32), y=np.zeros(20, np.int64))

    (b / "models.py").write_text(USER_MODELS)
    (b / "syntax.py").write_text("def f(:\n")

    (b / "empty.json").write_text("")
    (b / "truncated.json").write_text(a.sensitivity.read_text()[:300])
    (b / "latin1.json").write_bytes(b"\xff\xfe{")
    s = a.sensitivity
    _json_variant(s, b / "sens_nan.json", lambda o: o["layers"][1].update(trace=float("nan")))
    _json_variant(s, b / "sens_bad_trace.json", lambda o: o["layers"][1].update(trace="big"))
    _json_variant(s, b / "sens_no_layers.json", lambda o: o.update(layers=[]))
    _json_variant(s, b / "sens_extra_key.json", lambda o: o["layers"][0].update(extra=1))
    _json_variant(s, b / "sens_bad_type.json", lambda o: o["layers"][0].update(params="many"))
    _json_variant(s, b / "sens_huge.json", lambda o: o["layers"][0].update(params=10 ** 30))
    _json_variant(s, b / "sens_twice.json", lambda o: o["layers"][1].update(name=o["layers"][0]["name"]))
    _json_variant(s, b / "sens_version.json", lambda o: o.update(version=99))
    _json_variant(s, b / "sens_other.json", lambda o: o.update(fingerprint="0123456789abcdef"))
    (b / "sens_link.json").symlink_to(a.sensitivity)
    p = a.calibrated_plan
    _json_variant(p, b / "plan_bits.json", lambda o: o["layers"][1].update(w_bits=5))
    _json_variant(p, b / "plan_calibration.json", lambda o: o.update(calibration="x"))
    _json_variant(p, b / "plan_no_name.json", lambda o: o["layers"][1].update(name=None))
    _json_variant(p, b / "plan_unknown_layer.json", lambda o: o["layers"][1].update(name="nothere"))
    _json_variant(p, b / "plan_other.json", lambda o: o.update(fingerprint="0123456789abcdef"))
    _json_variant(a.plan, b / "plan_nan.json", lambda o: o["totals"].update(omega=float("nan")))
    (b / "report_nan.json").write_text('{"quantized": {"accuracy": {"top1": NaN}}}')

    def fewer_channels(o):
        o["layers"][1]["out_channels"] = 3
        o["layers"][1]["weight_scale"] = o["layers"][1]["weight_scale"][:3]
    _json_variant(p, b / "plan_channels.json", fewer_channels)

    # A plan for WeightReadInForward, which cannot be quantized as planned: uncalibrated, and
    # calibrated by hand (scales from the weights) for the exporter.
    from hawq_onnx.allocation.solve import allocate
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.core.grid import weight_scale
    from hawq_onnx.io.plan import ActivationQuant, save_plan
    from hawq_onnx.sources.model import load_model

    loaded = load_model(f"{b / 'models.py'}:weight_read_in_forward")
    plan = allocate(sensitivity_report(loaded), "4x", w_bits=(4, 8), a_bits=(8,), pin_ends=False)
    save_plan(plan, b / "weight_read.plan.json")
    modules = dict(fold_copy(loaded.module, loaded.input_shape).named_modules())
    for lp in plan.layers:
        lp.weight_scale = [float(v) for v in weight_scale(modules[lp.name].weight.detach().numpy(), lp.w_bits)]
        lp.input_quant = ActivationQuant(lp.a_bits, 0.05, 0)
    save_plan(plan, b / "weight_read.calibrated.plan.json")


@dataclass
class Env:
    a: Path
    b: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("robustness")
    art = copy_artifacts(root / "a")
    assert art.qdq_onnx is not None, "the quantized exporter is missing"
    make_bad_inputs(root / "b", art)
    return Env(root / "a", root / "b")


# --- the table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    args: str      # {a}: the good artefacts, {b}: broken inputs, {o}: a fresh empty output folder
    message: str   # regex, searched in the final error line
    code: int = 2
    bug: str = ""    # a known bug in a module this test does not own: expected to fail until fixed


EXPORT_Q = "export --quantized-pt {a}/quantized.pt"
FT = "finetune --plan {a}/plan.json --order ptq --out {o}/q.pt"
VAL = "validate --runs 0 --limit 40"
VAL_OK = VAL + " --float-onnx {a}/model.float.onnx --quantized-onnx {a}/model.qdq.onnx"
ALLOC = "allocate --sensitivity {a}/sensitivity.json --budget 4x"
Q = "quantize --out {o}/run"
AN = "analyze --out {o}/s.json"

CASES = [
    # inspect: files that are not ONNX models
    Case("inspect-missing", "inspect {b}/missing.onnx", "does not exist"),
    Case("inspect-empty", "inspect {b}/empty.onnx", "is empty"),
    Case("inspect-truncated", "inspect {b}/truncated.onnx", "not a readable ONNX model.*truncated"),
    Case("inspect-not-onnx", "inspect {b}/text.onnx", "not a readable ONNX model"),
    Case("inspect-checker", "inspect {b}/checker.onnx", "fails the ONNX checker: .*nowhere"),
    Case("inspect-nan-initializer", "inspect {b}/nan.onnx", "initializer 'stem.weight' holds NaN or Inf"),
    Case("inspect-fifo", "inspect {b}/fifo", "not a regular file"),
    Case("inspect-external-data", "inspect {b}/external.onnx", "weights.bin|external"),
    Case("inspect-plain-folder", "inspect {b}/folder", "is a folder"),
    Case("inspect-zip-not-bundle", "inspect {b}/notes.zip", "no manifest.json at its top level"),

    # export (float): the model, its weights, its input shape
    Case("export-factory-raises", "export --model {b}/models.py:raises --out {o}/m.onnx", "raised RuntimeError: boom"),
    Case("export-model-import-fails", "export --model {b}/syntax.py:f --out {o}/m.onnx", "importing model .*SyntaxError"),
    Case("export-model-file-missing", "export --model {b}/nope.py:f --out {o}/m.onnx", "model file .* does not exist"),
    Case("export-not-a-module", "export --model {b}/models.py:not_a_module --out {o}/m.onnx", "not a torch.nn.Module"),
    Case("export-unknown-model", "export --model nosuchmodel --out {o}/m.onnx", "unknown model 'nosuchmodel'"),
    Case("export-no-input-shape", "export --model {b}/models.py:no_shape --out {o}/m.onnx",
         "declares no input shape: pass --input-shape"),
    Case("export-plan-for-no-quantizable-layer",
         "export --model {b}/models.py:no_layer --plan {a}/quantized.plan.json --data digits --out {o}/q.onnx",
         "made for another model"),
    Case("export-forward-raises", "export --model {b}/models.py:broken_forward --out {o}/m.onnx",
         "does not run on an input of shape .*forward broke"),
    Case("export-input-shape-wrong", "export --input-shape 3,32,32 --out {o}/m.onnx",
         r"does not run on an input of shape \(1, 3, 32, 32\).*--input-shape"),
    Case("export-input-shape-text", "export --input-shape a,b --out {o}/m.onnx", "not a list of integers"),
    Case("export-input-shape-zero", "export --input-shape 0,8,8 --out {o}/m.onnx", "positive integers"),
    Case("export-weights-missing", "export --weights {b}/nope.pt --out {o}/m.onnx", "weights file .* does not exist"),
    Case("export-weights-empty", "export --weights {b}/empty.pt --out {o}/m.onnx", "is empty"),
    Case("export-weights-truncated", "export --weights {b}/truncated.pt --out {o}/m.onnx", "not a readable torch checkpoint"),
    Case("export-weights-not-checkpoint", "export --weights {b}/text.pt --out {o}/m.onnx", "not a readable torch checkpoint"),
    Case("export-weights-not-state-dict", "export --weights {b}/list.pt --out {o}/m.onnx", "holds no state_dict"),
    Case("export-weights-nan", "export --weights {b}/nan.pt --out {o}/m.onnx", "stem.weight holds NaN or Inf"),
    Case("export-weights-inf", "export --weights {b}/inf.pt --out {o}/m.onnx", "stem.weight holds NaN or Inf"),
    Case("export-weights-missing-keys", "export --weights {b}/missing_keys.pt --out {o}/m.onnx",
         "do not fit the model: missing 2"),
    Case("export-weights-wrong-shape", "export --weights {b}/wrong_shape.pt --out {o}/m.onnx",
         r"do not fit the model: wrong shape 1 \(e.g. stem.weight"),
    Case("export-weights-of-other-model", "export --model resnet20-cifar10 --weights {b}/weights.pt --out {o}/m.onnx",
         "do not fit the model"),
    # export (float): where it writes
    Case("export-out-is-input", "export --weights {b}/weights.pt --out {b}/weights.pt", "also an input"),
    Case("export-out-is-input-respelled", "export --weights {b}/weights.pt --out {b}/folder/../weights.pt",
         "also an input"),
    Case("export-out-is-symlink-to-input", "export --weights {b}/weights.pt --out {b}/weights_link.pt",
         "also an input"),
    Case("export-out-under-a-file", "export --out {a}/weights.pt/m.onnx", "weights.pt is a file"),
    Case("export-out-in-proc", "export --out /proc/hawq-onnx-test.onnx", "not writable"),
    Case("export-out-in-sys", "export --out /sys/hawq-onnx-test.onnx", "not writable"),
    Case("export-out-is-fifo", "export --out {b}/fifo", "not a regular file"),
    Case("export-out-is-folder", "export --out {o}", "is a directory"),
    Case("export-data-without-plan", "export --data digits --out {o}/m.onnx", "apply to the quantized export"),

    # export (quantized): plans, checkpoints, calibration data
    Case("export-plan-uncalibrated", "export --plan {a}/plan.json --out {o}/q.onnx", "not calibrated.*finetune"),
    Case("export-plan-missing", "export --plan {b}/nope.json --out {o}/q.onnx", "plan file .* does not exist"),
    Case("export-plan-not-json", "export --plan {b}/truncated.json --out {o}/q.onnx", "not valid JSON"),
    Case("export-plan-is-sensitivity", "export --plan {a}/sensitivity.json --out {o}/q.onnx", "not a hawq-onnx plan"),
    Case("export-plan-malformed", "export --plan {b}/plan_calibration.json --out {o}/q.onnx", "is malformed"),
    Case("export-plan-no-name", "export --plan {b}/plan_no_name.json --out {o}/q.onnx", "a layer has no name"),
    Case("export-plan-bad-bits", "export --plan {b}/plan_bits.json --out {o}/q.onnx", "w_bits 5"),
    Case("export-plan-other-model", "export --plan {b}/plan_other.json --out {o}/q.onnx", "made for another model"),
    Case("export-plan-unknown-layer", "export --plan {b}/plan_unknown_layer.json --out {o}/q.onnx",
         r"not found in the ONNX graph \(nothere\)"),
    Case("export-layer-weight-read-in-forward",
         "export --model {b}/models.py:weight_read_in_forward --plan {b}/weight_read.calibrated.plan.json --data digits "
         "--out {o}/q.onnx", r"not found in the ONNX graph \(conv\)"),
    Case("export-quantized-truncated", "export --quantized-pt {b}/truncated.pt --out {o}/q.onnx", "not a readable torch file"),
    Case("export-quantized-not-ours", "export --quantized-pt {a}/weights.pt --out {o}/q.onnx",
         "not a hawq-onnx quantized checkpoint"),
    Case("export-quantized-nan", "export --quantized-pt {b}/nan.quantized.pt --out {o}/q.onnx", "NaN or Inf"),
    Case("export-quantized-other-model", EXPORT_Q + " --model resnet20-cifar10 --out {o}/q.onnx", "another model"),
    Case("export-plan-disagrees-with-quantized", EXPORT_Q + " --plan {b}/plan_bits.json --out {o}/q.onnx", "w_bits 5"),
    Case("export-data-wrong-shape", EXPORT_Q + " --data npz:{b}/wrong_shape.npz --out {o}/q.onnx",
         r"samples of shape \(3, 32, 32\) do not fit the model input \(1, 8, 8\)"),
    Case("export-data-empty", EXPORT_Q + " --data npz:{b}/empty.npz --out {o}/q.onnx", "at least one sample"),
    Case("export-data-labels", EXPORT_Q + " --data npz:{b}/labels.npz --out {o}/q.onnx", "labels out of range"),
    Case("export-data-nan", EXPORT_Q + " --data npz:{b}/nan.npz --out {o}/q.onnx", "inputs hold NaN or Inf"),
    Case("export-data-missing", EXPORT_Q + " --data npz:{b}/nope.npz --out {o}/q.onnx", "does not exist"),
    Case("export-data-unknown", EXPORT_Q + " --data bogus --out {o}/q.onnx", "bogus"),
    Case("export-out-is-plan", "export --plan {a}/quantized.plan.json --out {a}/quantized.plan.json", "also an input"),
    Case("export-out-is-quantized", EXPORT_Q + " --out {a}/quantized.pt", "also an input"),

    # allocate: sensitivity files and budgets
    Case("allocate-sensitivity-missing", "allocate --sensitivity {b}/nope.json --budget 4x --out {o}/p.json", "does not exist"),
    Case("allocate-sensitivity-empty", "allocate --sensitivity {b}/empty.json --budget 4x --out {o}/p.json", "not valid JSON"),
    Case("allocate-sensitivity-truncated", "allocate --sensitivity {b}/truncated.json --budget 4x --out {o}/p.json",
         "not valid JSON"),
    Case("allocate-sensitivity-binary", "allocate --sensitivity {b}/latin1.json --budget 4x --out {o}/p.json",
         "not valid JSON"),
    Case("allocate-sensitivity-is-onnx", "allocate --sensitivity {a}/model.float.onnx --budget 4x --out {o}/p.json",
         "not valid JSON"),
    Case("allocate-sensitivity-is-plan", "allocate --sensitivity {a}/plan.json --budget 4x --out {o}/p.json",
         "not a hawq-onnx sensitivity file"),
    Case("allocate-sensitivity-nan", "allocate --sensitivity {b}/sens_nan.json --budget 4x --out {o}/p.json",
         "not valid JSON .*NaN"),
    Case("allocate-sensitivity-bad-trace", "allocate --sensitivity {b}/sens_bad_trace.json --budget 4x --out {o}/p.json",
         "layer block_conv1 has an invalid trace"),
    Case("allocate-sensitivity-no-layers", "allocate --sensitivity {b}/sens_no_layers.json --budget 4x --out {o}/p.json",
         "lists no layers"),
    Case("allocate-sensitivity-extra-key", "allocate --sensitivity {b}/sens_extra_key.json --budget 4x --out {o}/p.json",
         "is malformed"),
    Case("allocate-sensitivity-bad-type", "allocate --sensitivity {b}/sens_bad_type.json --budget 4x --out {o}/p.json",
         "invalid params"),
    Case("allocate-sensitivity-huge-count", "allocate --sensitivity {b}/sens_huge.json --budget 4x --out {o}/p.json",
         "invalid params"),
    Case("allocate-sensitivity-layer-twice", "allocate --sensitivity {b}/sens_twice.json --budget 4x --out {o}/p.json",
         "names layer stem twice"),
    Case("allocate-sensitivity-version", "allocate --sensitivity {b}/sens_version.json --budget 4x --out {o}/p.json",
         "version 99"),
    Case("allocate-budget-below-smallest", "allocate --sensitivity {a}/sensitivity.json --budget 100x --out {o}/p.json",
         "below the smallest possible weight size"),
    Case("allocate-budget-above-float", "allocate --sensitivity {a}/sensitivity.json --budget 10MB --out {o}/p.json",
         "larger than the float32 weights"),
    Case("allocate-budget-ratio-below-1", "allocate --sensitivity {a}/sensitivity.json --budget 0.5x --out {o}/p.json",
         "at least 1x"),
    Case("allocate-budget-text", "allocate --sensitivity {a}/sensitivity.json --budget lots --out {o}/p.json",
         "not understood"),
    Case("allocate-budget-nan", "allocate --sensitivity {a}/sensitivity.json --budget nanx --out {o}/p.json",
         "not understood"),
    Case("allocate-bops-below-fewest", ALLOC + " --bops 1 --out {o}/p.json", "below the fewest possible BOPs"),
    Case("allocate-bops-above-float", ALLOC + " --bops 1e400 --out {o}/p.json", "above the float model's"),
    Case("allocate-pin-unknown-layer", ALLOC + " --pin nope=8/8 --out {o}/p.json", "no layer matches 'nope'"),
    Case("allocate-bits-unknown", ALLOC + " --w-bits 7 --out {o}/p.json", "'7' is not one of"),
    Case("allocate-out-is-input", ALLOC + " --out {a}/sensitivity.json", "also an input"),
    Case("allocate-out-is-symlink-to-input", ALLOC + " --out {b}/sens_link.json", "also an input"),
    Case("allocate-out-under-a-file", ALLOC + " --out {a}/weights.pt/p.json", "is a file"),
    Case("allocate-out-in-proc", ALLOC + " --out /proc/hawq-onnx-test.json", "not writable"),
    Case("allocate-out-is-fifo", ALLOC + " --out {b}/fifo", "not a regular file"),
    Case("allocate-plot-under-a-file", ALLOC + " --out {o}/p.json --plot {a}/weights.pt/p.png", "is a file"),
    Case("allocate-plot-is-out", ALLOC + " --out {o}/p.json --plot {o}/p.json", "also an input"),

    # finetune: plans, sensitivity, data, weights, training settings
    Case("finetune-plan-other-model", "finetune --plan {b}/plan_other.json --order ptq --out {o}/q.pt", "another model"),
    Case("finetune-plan-no-name", "finetune --plan {b}/plan_no_name.json --order ptq --out {o}/q.pt", "a layer has no name"),
    Case("finetune-plan-unknown-layer", "finetune --plan {b}/plan_unknown_layer.json --order ptq --out {o}/q.pt",
         "'nothere' is not a Conv1d, Conv2d or Linear"),
    Case("finetune-plan-wrong-channels", "finetune --plan {b}/plan_channels.json --order ptq --out {o}/q.pt",
         "3 output channels"),
    Case("finetune-plan-holds-nan", "finetune --plan {b}/plan_nan.json --order ptq --out {o}/q.pt",
         "not valid JSON .*NaN"),
    Case("finetune-sensitivity-other-model", FT + " --sensitivity {b}/sens_other.json", "another model"),
    Case("finetune-sensitivity-malformed", FT + " --sensitivity {b}/sens_bad_trace.json", "invalid trace"),
    Case("finetune-data-wrong-shape", FT + " --data npz:{b}/wrong_shape.npz", "do not fit the model input"),
    Case("finetune-data-empty", FT + " --data npz:{b}/empty.npz", "at least one sample"),
    Case("finetune-data-labels", FT + " --data npz:{b}/labels.npz", "labels out of range"),
    Case("finetune-data-nan", FT + " --data npz:{b}/nan.npz", "inputs hold NaN or Inf"),
    Case("finetune-data-missing-folder", FT + " --data cifar10:{b}/nope", "does not exist"),
    Case("finetune-weights-nan", FT + " --weights {b}/nan.pt", "NaN or Inf"),
    Case("finetune-weights-wrong-shape", FT + " --weights {b}/wrong_shape.pt", "do not fit the model"),
    Case("finetune-factory-raises", FT + " --model {b}/models.py:raises", "raised RuntimeError: boom"),
    Case("finetune-layer-weight-read-in-forward",
         "finetune --model {b}/models.py:weight_read_in_forward --plan {b}/weight_read.plan.json --data digits "
         "--order ptq --out {o}/q.pt", r"computes with conv.weight itself.*--keep-float conv"),
    Case("finetune-lr-inf", "finetune --plan {a}/plan.json --steps 2 --lr inf --out {o}/q.pt", "must be positive"),
    Case("finetune-epochs-inf", "finetune --plan {a}/plan.json --epochs inf --out {o}/q.pt", "finite"),
    Case("finetune-distill-weight-above-1", "finetune --plan {a}/plan.json --steps 2 --distill-weight 1.5 --out {o}/q.pt",
         r"--distill-weight must be in \[0, 1\]"),
    Case("finetune-temperature-zero", "finetune --plan {a}/plan.json --steps 2 --temperature 0 --out {o}/q.pt",
         "temperature positive"),
    Case("finetune-diverges", "finetune --plan {a}/plan.json --order single --steps 2 --batch-size 8 --lr 1e30 --out {o}/q.pt",
         "lower --lr"),
    Case("finetune-out-is-plan-out", FT + " --plan-out {o}/q.pt", "also an input"),
    Case("finetune-plan-out-is-plan", FT + " --plan-out {a}/plan.json", "also an input"),
    Case("finetune-plan-out-under-a-file", FT + " --plan-out {a}/weights.pt/x.json", "is a file"),
    Case("finetune-out-in-proc", "finetune --plan {a}/plan.json --order ptq --out /proc/hawq-onnx-test.pt", "not writable"),

    # validate: the two models, data, outputs
    Case("validate-float-missing", VAL + " --float-onnx {b}/nope.onnx --quantized-onnx {a}/model.qdq.onnx --data digits", "does not exist"),
    Case("validate-float-empty", VAL + " --float-onnx {b}/empty.onnx --quantized-onnx {a}/model.qdq.onnx --data digits", "is empty"),
    Case("validate-float-truncated", VAL + " --float-onnx {b}/truncated.onnx --quantized-onnx {a}/model.qdq.onnx --data digits",
         "not a readable ONNX model"),
    Case("validate-quant-not-onnx", VAL + " --float-onnx {a}/model.float.onnx --quantized-onnx {b}/text.onnx --data digits",
         "not a readable ONNX model"),
    Case("validate-quant-checker", VAL + " --float-onnx {a}/model.float.onnx --quantized-onnx {b}/checker.onnx --data digits",
         "fails the ONNX checker"),
    Case("validate-float-nan-weight", VAL + " --float-onnx {b}/nan.onnx --quantized-onnx {a}/model.qdq.onnx --data digits",
         "holds NaN or Inf"),
    Case("validate-quant-inf-scale", VAL + " --float-onnx {a}/model.float.onnx --quantized-onnx {b}/inf_scale.onnx --data digits",
         r"\(the scale of 'stem.weight'\) holds NaN or Inf"),
    Case("validate-dynamic-input-shape", VAL + " --float-onnx {b}/dynamic.onnx --quantized-onnx {a}/model.qdq.onnx --data digits",
         r"dynamic input shape \(N, 1, \?, \?\): pass --input-shape"),
    Case("validate-input-without-shape", VAL + " --float-onnx {b}/no_shape.onnx --quantized-onnx {a}/model.qdq.onnx --data digits",
         "fails the ONNX checker: .*shape"),
    Case("validate-quant-of-other-model", VAL + " --float-onnx {a}/model.float.onnx --quantized-onnx {b}/other.onnx --data digits",
         r"takes input 'input' of shape \(N, 64\)"),
    Case("validate-data-wrong-shape", VAL_OK + " --data npz:{b}/wrong_shape.npz", "do not fit the model input"),
    Case("validate-data-empty", VAL_OK + " --data npz:{b}/empty.npz", "at least one sample"),
    Case("validate-data-labels", VAL_OK + " --data npz:{b}/labels.npz", "labels out of range"),
    Case("validate-data-nan", VAL_OK + " --data npz:{b}/nan.npz", "inputs hold NaN or Inf"),
    Case("validate-input-shape-wrong", VAL_OK + " --data digits --input-shape 3,32,32", "do not fit the model input"),
    Case("validate-model-raises", VAL_OK + " --data digits --model {b}/models.py:raises", "raised RuntimeError"),
    Case("validate-sensitivity-malformed", VAL_OK + " --data digits --sensitivity {b}/sens_nan.json", "NaN"),
    Case("validate-json-is-input", VAL_OK + " --data digits --json {a}/model.float.onnx", "also an input"),
    Case("validate-report-under-a-file", VAL_OK + " --data digits --report {a}/weights.pt/r.md", "is a file"),
    Case("validate-json-in-proc", VAL_OK + " --data digits --json /proc/hawq-onnx-test.json", "not writable"),
    Case("validate-max-drop-negative", VAL_OK + " --data digits --max-drop -1", "non-negative"),

    # package: the model and the destination
    Case("package-missing", "package {b}/nope.onnx --out {o}/bundle", "does not exist"),
    Case("package-empty", "package {b}/empty.onnx --out {o}/bundle", "is empty"),
    Case("package-truncated", "package {b}/truncated.onnx --out {o}/bundle", "not a readable ONNX model"),
    Case("package-checker", "package {b}/checker.onnx --out {o}/bundle", "fails the ONNX checker"),
    Case("package-nan-weight", "package {b}/nan.onnx --out {o}/bundle", "holds NaN or Inf"),
    Case("package-out-is-input", "package {a}/model.qdq.onnx --out {a}/model.qdq.onnx", "would overwrite the input"),
    Case("package-out-holds-input", "package {a}/model.qdq.onnx --out {a}", "would overwrite the input"),
    Case("package-out-not-a-bundle", "package {a}/model.qdq.onnx --out {b}/folder", "not empty and is not a hawq-onnx bundle"),
    Case("package-out-is-a-file", "package {a}/model.qdq.onnx --out {a}/weights.pt", "exists and is a file"),
    Case("package-out-under-a-file", "package {a}/model.qdq.onnx --out {a}/weights.pt/bundle", "is a file"),
    Case("package-out-in-proc", "package {a}/model.qdq.onnx --out /proc/hawq-onnx-test", "not writable"),
    Case("package-zip-in-proc", "package {a}/model.qdq.onnx --out /proc/hawq-onnx-test.zip", "not writable"),
    Case("package-report-not-json", "package {a}/model.qdq.onnx --out {o}/bundle --report {b}/truncated.json",
         "not valid JSON"),
    Case("package-report-holds-nan", "package {a}/model.qdq.onnx --out {o}/bundle --report {b}/report_nan.json",
         "not valid JSON .*NaN"),
    Case("package-model-raises", "package {a}/model.qdq.onnx --out {o}/bundle --model {b}/models.py:raises",
         "raised RuntimeError"),

    # analyze: the model, its data, where it writes
    Case("analyze-factory-raises", AN + " --model {b}/models.py:raises", "raised RuntimeError"),
    Case("analyze-no-quantizable-layer", AN + " --model {b}/models.py:no_layer --data digits", "no quantizable layer"),
    Case("analyze-weights-nan", AN + " --weights {b}/nan.pt", "NaN or Inf"),
    Case("analyze-weights-wrong-shape", AN + " --weights {b}/wrong_shape.pt", "do not fit the model"),
    Case("analyze-data-wrong-shape", AN + " --data npz:{b}/wrong_shape.npz", "do not fit the model input"),
    Case("analyze-data-empty", AN + " --data npz:{b}/empty.npz", "at least one sample"),
    Case("analyze-data-labels", AN + " --data npz:{b}/labels.npz", "labels out of range"),
    Case("analyze-batches-zero", AN + " --batches 0", "must be positive"),
    Case("analyze-out-is-weights", "analyze --weights {b}/weights.pt --out {b}/weights.pt", "also an input"),
    Case("analyze-out-under-a-file", "analyze --out {a}/weights.pt/s.json", "is a file"),
    Case("analyze-out-in-proc", "analyze --out /proc/hawq-onnx-test.json", "not writable"),
    Case("analyze-plot-under-a-file", AN + " --plot {a}/weights.pt/s.png", "is a file"),

    # quantize: what fails before any stage has run
    Case("quantize-factory-raises", Q + " --model {b}/models.py:raises", "raised RuntimeError",),
    Case("quantize-weights-nan", Q + " --weights {b}/nan.pt", "NaN or Inf"),
    Case("quantize-data-labels", Q + " --data npz:{b}/labels.npz", "labels out of range",),
    Case("quantize-out-is-a-file", "quantize --out {a}/weights.pt", "weights.pt' is a file"),
    Case("quantize-out-under-a-file", "quantize --out {a}/weights.pt/run", "weights.pt.*(Not a directory|is a file)"),
    Case("quantize-bits-unknown", Q + " --w-bits 5", "choose from"),
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*folders: Path) -> dict[str, str]:
    """Every entry under the folders (hidden ones too): regular files by content, the rest by kind."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            key = str(p)
            if p.is_symlink():
                out[key] = "link -> " + os.readlink(p)
            elif p.is_file():
                out[key] = _sha256(p)
            else:
                out[key] = "dir" if p.is_dir() else "special"
    return out


def named_outputs(args: list[str]) -> list[Path]:
    return [Path(args[i + 1]) for i, a in enumerate(args[:-1]) if a in OUTPUT_OPTIONS]


def final_line(stderr: str) -> str:
    """The last line as a terminal shows it (progress bars redraw with carriage returns)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


@dataclass
class Before:
    inputs: dict[str, str]     # snapshot of the input folders
    outputs: set[Path]         # named outputs that existed already (a folder, an input)


def before_run(env: Env, args: list[str]) -> Before:
    return Before(snapshot(env.a, env.b), {p for p in named_outputs(args) if os.path.lexists(p)})


def check_bad_input(env: Env, case: Case, out: Path, code: int, stderr: str, before: Before,
                    args: list[str]) -> None:
    assert "Traceback" not in stderr, stderr
    line = final_line(stderr)
    assert code == case.code, f"exit {code}, expected {case.code}: {stderr[-600:]}"
    assert line.startswith(("error: ", "Error: ")), stderr[-600:]
    assert re.search(case.message, line), f"{line!r} does not match {case.message!r}"
    errors = [ln for ln in stderr.splitlines() if ln.rsplit("\r", 1)[-1].startswith(("error:", "Error:"))]
    assert len(errors) == 1, stderr
    for p in named_outputs(args):
        assert p in before.outputs or not os.path.lexists(p), f"{p} was written"
    assert sorted(out.iterdir()) == [], f"left in the output folder: {sorted(out.iterdir())}"
    assert snapshot(env.a, env.b) == before.inputs, "an input changed, or a file appeared beside the inputs"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(env, case, tmp_path, request):
    if case.bug:
        request.applymarker(pytest.mark.xfail(reason=case.bug, strict=True))
    out = tmp_path / "o"
    out.mkdir()
    args = shlex.split(case.args.format(a=env.a, b=env.b, o=out))
    before = before_run(env, args)
    result = CliRunner().invoke(cli, args)
    check_bad_input(env, case, out, result.exit_code, result.stderr, before, args)


def test_table_covers_every_command():
    commands = {c.args.split()[0] for c in CASES}
    missing = set(cli.commands) - commands
    assert not missing, f"no robustness case for: {', '.join(sorted(missing))}"


SUBPROCESS_CASES = ["inspect-truncated", "export-weights-nan", "allocate-budget-below-smallest"]


def test_bad_input_in_real_processes(env, tmp_path):
    """Nothing but the one error line reaches a real stderr (no warning, no traceback, no log)."""
    by_id = {c.id: c for c in CASES}
    runs = []
    for case_id in SUBPROCESS_CASES:
        case = by_id[case_id]
        out = tmp_path / case_id
        out.mkdir()
        args = shlex.split(case.args.format(a=env.a, b=env.b, o=out))
        before = before_run(env, args)
        proc = subprocess.Popen([sys.executable, "-c", "from hawq_onnx.cli import main; main()", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((case, out, args, before, proc))
    for case, out, args, before, proc in runs:
        stdout, stderr = proc.communicate(timeout=120)
        assert stderr.count("\n") == 1, stderr  # exactly one line
        assert stdout == ""
        check_bad_input(env, case, out, proc.returncode, stderr, before, args)


def test_debug_shows_the_traceback(env, tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "inspect", str(env.b / "truncated.onnx")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and final_line(result.stderr).startswith("error: ")


def test_gate_failure_exits_1_after_writing_the_reports(env, tmp_path):
    """--max-drop is the one check that exits 1, and only once the reports are written."""
    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["validate", "--float-onnx", str(env.a / "model.float.onnx"),
                                      "--quantized-onnx", str(env.b / "damaged.onnx"), "--data", "digits", "--runs", "0",
                                      "--limit", "100", "--max-drop", "1", "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert re.search(r"error: top-1 drop .* exceeds --max-drop 1", final_line(result.stderr))
    assert json.loads(report.read_text())["gate"] == {"max_drop": 1.0, "passed": False}


# --- check_output_path and the atomic writer, where the table cannot reach -------------------

def test_check_output_path_probes_the_folder_for_real(tmp_path, monkeypatch):
    """Permission bits do not stop root: the check creates (and removes) a file to know."""
    from hawq_onnx.errors import HawqError
    from hawq_onnx.io import atomic as artifacts

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", refuse)
    with pytest.raises(HawqError, match=r"output folder .* is not writable \(Permission denied\)"):
        artifacts.check_output_path(tmp_path / "new" / "deeper" / "out.onnx")
    assert list(tmp_path.iterdir()) == []  # no folder made before the work is done
    monkeypatch.undo()
    assert artifacts.check_output_path(tmp_path / "new" / "out.onnx") == tmp_path / "new" / "out.onnx"
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    """Disk full mid-write: one-line error, the old file intact, no temporary file left."""
    from hawq_onnx.errors import HawqError
    from hawq_onnx.io import atomic as artifacts

    target = tmp_path / "plan.json"
    target.write_text("old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", disk_full)
    with pytest.raises(HawqError, match="cannot write .*No space left on device"):
        artifacts.write_json(target, {"new": 1})
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_atomic_writer_never_replaces_a_device_or_folder(tmp_path):
    from hawq_onnx.errors import HawqError
    from hawq_onnx.io import atomic as artifacts

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name, match in (("fifo", "not a regular file"), ("folder", "is a folder")):
        with pytest.raises(HawqError, match=match):
            artifacts.write_bytes(tmp_path / name, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder"]
    assert (tmp_path / "folder").is_dir() and list((tmp_path / "folder").iterdir()) == []


def test_writing_through_a_symlink_replaces_the_link_not_its_target(tmp_path):
    from hawq_onnx.io import atomic as artifacts

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.json").write_text("kept")
    link = tmp_path / "out.json"
    link.symlink_to(elsewhere / "real.json")
    artifacts.write_text(link, "new")
    assert (elsewhere / "real.json").read_text() == "kept"
    assert not link.is_symlink() and link.read_text() == "new"


# --- the schemas' own loaders ------------------------------------------------------------------

def test_plan_loader_refuses_wrong_types(env):
    from hawq_onnx.errors import HawqError
    from hawq_onnx.io.plan import plan_from_json

    good = json.loads((env.a / "quantized.plan.json").read_text())
    plan_from_json(copy.deepcopy(good))
    edits = {
        "w_bits float": (lambda o: o["layers"][1].update(w_bits=4.0), "w_bits 4.0"),
        "w_bits bool": (lambda o: o["layers"][1].update(w_bits=True), "w_bits True"),
        "params bool": (lambda o: o["layers"][1].update(params=True), "invalid params"),
        "scale underflows float32": (lambda o: o["layers"][1]["input_quant"].update(scale=1e-50), "input scale"),
        "scale overflows float32": (lambda o: o["layers"][1].update(
            weight_scale=[1e39] * o["layers"][1]["out_channels"]), "weight scale"),
        "scale text": (lambda o: o["layers"][1].update(weight_scale="0.1"), "not a list"),
        "input_quant list": (lambda o: o["layers"][1].update(input_quant=[1, 2]), "malformed"),
        "bits disagree": (lambda o: o["layers"][1].update(a_bits=8 if o["layers"][1]["a_bits"] == 4 else 4),
                          "input_quant bits"),
        "layers not a list": (lambda o: o.update(layers={"a": 1}), "malformed"),
        "totals not an object": (lambda o: o.update(totals=[]), "malformed"),
        "omega nan": (lambda o: o["layers"][0].update(omega=float("nan")), "invalid omega"),
    }
    for edit, match in edits.values():
        obj = copy.deepcopy(good)
        edit(obj)
        with pytest.raises(HawqError, match=match):
            plan_from_json(obj)
