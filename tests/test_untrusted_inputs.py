"""Inputs that are data must not run code or reach files they name.

CIFAR-10 python batches are pickles: a crafted one must be refused before it calls anything, and
the genuine format (a Python 2 protocol-2 pickle of a dict with a numpy array) must still load.
An ONNX model must be self-contained: a tensor anywhere in it (a Constant node, a subgraph, a
sparse initializer, a function) that points at external data is refused before onnx.checker or
anything else resolves the path against the current directory.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hawq_onnx.core.onnx_inspect import inspect_onnx, load_onnx
from hawq_onnx.core.onnx_tensors import check_initializers
from hawq_onnx.errors import HawqError
from hawq_onnx.models.registry import ZOO
from hawq_onnx.sources.data import _load_cifar10, load_data

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# --- CIFAR-10 python batches ---------------------------------------------------------------------

class Raw(bytes):
    """Opcodes written as they are."""


class Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def py2_pickle(obj, core: str = "numpy.core.multiarray") -> bytes:
    """``obj`` as Python 2's cPickle wrote the CIFAR-10 batches: protocol 2, str (here bytes) as
    SHORT_BINSTRING/BINSTRING, and numpy arrays through ``_reconstruct`` with their raw bytes."""
    out = bytearray(b"\x80\x02")

    def w(o) -> None:
        if isinstance(o, Raw):
            out.extend(o)
        elif o is None:
            out.extend(b"N")
        elif o is True or o is False:
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"M" + struct.pack("<H", o) if 0 <= o < 65536
                       else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend((b"U" + bytes([len(o)]) if len(o) < 256 else b"T" + struct.pack("<I", len(o))) + o)
        elif isinstance(o, Global):
            out.extend(f"c{o.module}\n{o.name}\n".encode())
        elif isinstance(o, tuple):
            out.extend(b"(")
            for item in o:
                w(item)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for item in o:
                w(item)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, np.dtype):
            w(Global("numpy", "dtype"))
            w((b"O8" if o.kind == "O" else o.str[1:].encode(), 0, 1))
            out.extend(b"R")
            w((3, o.str[0].encode() if o.itemsize > 1 else b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
        elif isinstance(o, np.ndarray):
            w(Global(core, "_reconstruct"))
            w((Global("numpy", "ndarray"), (0,), b"b"))
            out.extend(b"R")
            raw = o.ravel().tolist() if o.dtype == object else np.ascontiguousarray(o).tobytes()
            w((1, tuple(o.shape), o.dtype, False, raw))  # an object array's state lists its items
            out.extend(b"b")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5",
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_batches(root: Path, core: str = "numpy.core.multiarray", n: int = 6) -> tuple[Path, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    contents = {}
    for seed, name in enumerate(BATCHES):
        contents[name] = batch(n, seed)
        (folder / name).write_bytes(py2_pickle(contents[name], core))
    return folder, contents


def assert_loads_genuine(root: Path, contents: dict) -> None:
    """The batches in ``root`` load, with exactly the values written."""
    x_tr, y_tr, x_te, y_te = _load_cifar10(root)
    train = [contents[name] for name in BATCHES[:5]]
    assert np.array_equal(x_tr, np.concatenate([d[b"data"] for d in train]).reshape(-1, 3, 32, 32))
    assert y_tr.tolist() == sum((d[b"labels"] for d in train), []) and y_tr.dtype == np.int64
    assert np.array_equal(x_te, contents["test_batch"][b"data"].reshape(-1, 3, 32, 32))
    assert y_te.tolist() == contents["test_batch"][b"labels"] and y_te.dtype == np.int64
    ds = load_data(f"cifar10:{root}", ZOO["resnet20-cifar10"])
    assert len(ds.train) == len(y_tr) and len(ds.test) == len(y_te) and ds.test.x.shape[1:] == (3, 32, 32)


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict:
    """Ways a pickle runs code; each would create ``marker``. Some return plausible values, so
    the batch around them still loads as valid data."""
    m = str(marker)
    return {
        "os.system": (_Reduce(os.system, f"touch '{m}'"), ".system"),  # posix.system
        "builtins.eval": (_Reduce(eval, f"open({m!r}, 'w').write('x') and b'training batch 1 of 5'"),
                          "__builtin__.eval"),  # protocol 2 spells builtins the Python 2 way
        "builtins.exec": (_Reduce(exec, f"open({m!r}, 'w').write('x')"), "__builtin__.exec"),
        # getattr(__import__('os'), 'system')('touch MARKER'), in opcodes.
        "builtins.getattr": (Raw(f"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch {m}\ntR"
                                 .encode()), "builtins.getattr"),
        # A numpy function other than the array reconstruction: writes MARKER (a .npy name).
        "numpy.save": (_Reduce(np.save, m, np.zeros(1)), "numpy.save"),
    }


@pytest.mark.parametrize("core", ["numpy.core.multiarray", "numpy._core.multiarray"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "builtins.getattr", "numpy.save"])
def test_crafted_batch_is_refused_before_it_runs(tmp_path, name, core):
    folder, contents = write_batches(tmp_path / "d", core)
    # The genuine format (Python 2 pickles naming only numpy's reconstruction) loads, values intact.
    assert b"_codecs" not in (folder / "test_batch").read_bytes()
    assert_loads_genuine(tmp_path / "d", contents)
    # One batch replaced by a crafted one: refused before its payload runs.
    marker = tmp_path / "pwned.npy"
    payload, shown = _payloads(marker)[name]
    d = batch(6, 2)
    d[b"batch_label"] = payload  # the rest of the batch is genuine
    if isinstance(payload, Raw):
        data = py2_pickle(d, core)
    else:
        genuine = py2_pickle({k: v for k, v in d.items() if k != b"batch_label"}, core)
        evil = pickle.dumps(payload, protocol=2)  # PROTO 2 ... STOP: splice in the value's opcodes
        data = genuine[:-2] + py2_pickle(b"batch_label")[2:-1] + evil[2:-1] + b"u."
    (folder / "data_batch_3").write_bytes(data)
    with pytest.raises(HawqError) as err:
        load_data(f"cifar10:{tmp_path / 'd'}", ZOO["resnet20-cifar10"])
    message = str(err.value)
    assert "data_batch_3" in message and shown in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("opcodes", [b"Panything\n", b"Vanything\nQ"])  # PERSID, BINPERSID
def test_persistent_id_is_refused(tmp_path, opcodes):
    folder, _ = write_batches(tmp_path)
    d = batch(6, 5)
    d[b"batch_label"] = Raw(opcodes)
    (folder / "test_batch").write_bytes(py2_pickle(d))
    with pytest.raises(HawqError, match="test_batch .*persistent id"):
        _load_cifar10(tmp_path)


@pytest.mark.parametrize("edit,match", [
    # Only numpy's own reconstruction, as numpy writes it: no other subtype, no object arrays.
    (lambda d: d.update({b"data": Raw(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(K\x00tU\x01btR")}),
     "_reconstruct with arguments"),
    (lambda d: d.update({b"data": Raw(b"cnumpy\nndarray\n(K\x03\x85tR")}), "numpy.ndarray may only"),
    (lambda d: d.update({b"data": d[b"data"].astype(object)}), "not a plain numeric type"),
    # The structure of a batch.
    (lambda d: d.update({b"data": d[b"data"].astype(np.float64)}), "must be a uint8 array"),
    (lambda d: d.update({b"data": d[b"data"].reshape(6, 3, 32, 32)}), "must be a uint8 array"),
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "6 images but 5 labels"),
    (lambda d: d.update({b"labels": [1.5] * 6}), "list of ints in 0..9"),
    (lambda d: d.update({b"filenames": [b"a"]}), "filenames"),
    (lambda d: d.pop(b"labels"), "no b'labels' entry"),
])
def test_batch_structure_is_checked(tmp_path, edit, match):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    contents = {name: batch(4, seed) for seed, name in enumerate(BATCHES)}
    for name, d in contents.items():  # Python 3's pickle (protocol 4, numpy._core) loads too
        (folder / name).write_bytes(pickle.dumps(d, protocol=4))
    assert_loads_genuine(tmp_path, contents)
    d = batch(6, 9)
    edit(d)
    (folder / "data_batch_1").write_bytes(py2_pickle(d))
    with pytest.raises(HawqError, match=match):
        _load_cifar10(tmp_path)


@pytest.mark.parametrize("module,name", [
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("builtins", "getattr"), ("_codecs", "encode"),
    ("numpy", "frombuffer"), ("numpy.core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct "), ("numpy.core", "_reconstruct"), ("numpy", "load"),
])
def test_only_numpys_reconstruction_globals_are_admitted(module, name):
    from hawq_onnx.sources.cifar_pickle import CifarUnpickler

    unpickler = CifarUnpickler(io.BytesIO(b""), "batch")
    with pytest.raises(HawqError, match=f"batch is not a CIFAR-10 python batch: it names the global {module}"):
        unpickler.find_class(module, name)


# --- ONNX models with external data -------------------------------------------------------------

def _external(name: str, location: str = "secret.bin", values=None) -> TensorProto:
    t = numpy_helper.from_array(np.asarray(values if values is not None else np.ones((2, 2)), np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(t.dims))))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _vi(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 2])


def _model(nodes, initializers=(), sparse=(), functions=(), opset=17):
    graph = helper.make_graph(nodes, "g", [_vi("x")], [_vi("y")], initializer=list(initializers),
                              sparse_initializer=list(sparse))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def constant_model():
    return _model([helper.make_node("Constant", [], ["c"], name="const", value=_external("c")),
                   helper.make_node("MatMul", ["x", "c"], ["y"], name="mm")])


def if_model():
    branch = lambda tag, t: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], [f"{tag}_out"], value=t)], f"{tag}_branch", [], [_vi(f"{tag}_out")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    good = numpy_helper.from_array(np.ones((2, 2), np.float32), "good")
    return _model([helper.make_node("If", ["cond"], ["b"], name="if0", then_branch=branch("then", _external("hidden")),
                                    else_branch=branch("else", good)),
                   helper.make_node("Add", ["x", "b"], ["y"])], initializers=[cond])


def sparse_model():
    values = _external("s_values", values=[1.0, 2.0])
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "s_indices")
    sparse = helper.make_sparse_tensor(values, indices, [2, 2])
    return _model([helper.make_node("Add", ["x", "s_values"], ["y"])], sparse=[sparse])


def function_model():
    body = [helper.make_node("Constant", [], ["k"], value=_external("k")), helper.make_node("Add", ["a", "k"], ["b"])]
    fn = helper.make_function("local", "AddK", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    return _model([helper.make_node("AddK", ["x"], ["y"], domain="local")], functions=[fn])


def constant_sparse_value_model():
    values = _external("sv_values", values=[1.0, 2.0])
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sv_indices")
    return _model([helper.make_node("Constant", [], ["c"], name="csparse",
                                    sparse_value=helper.make_sparse_tensor(values, indices, [2, 2])),
                   helper.make_node("Add", ["x", "c"], ["y"])])


def nested_if_model():
    """External data two subgraphs deep (If inside If), in an attribute of a non-Constant op."""
    inner_t = _external("deep")
    inner = helper.make_graph([helper.make_node("Constant", [], ["i_out"], value=inner_t)], "inner", [], [_vi("i_out")])
    plain = helper.make_graph([helper.make_node("Constant", [], ["p_out"], value=numpy_helper.from_array(
        np.ones((2, 2), np.float32)))], "plain", [], [_vi("p_out")])
    outer = helper.make_graph([helper.make_node("If", ["cond"], ["o_out"], then_branch=inner, else_branch=plain)],
                              "outer", [], [_vi("o_out")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([helper.make_node("If", ["cond"], ["b"], then_branch=outer, else_branch=plain),
                   helper.make_node("Add", ["x", "b"], ["y"])], initializers=[cond])


MODELS = {
    "constant": (constant_model, "tensor 'c' in node 'const' (Constant) > attribute 'value'"),
    "constant-sparse-value": (constant_sparse_value_model,
                              "node 'csparse' (Constant) > attribute 'sparse_value' > sparse tensor 'sv_values'"),
    "if-subgraph": (if_model, "node 'if0' (If) > attribute 'then_branch' > subgraph 'then_branch'"),
    "sparse-initializer": (sparse_model, "sparse initializer 's_values'"),
    "function": (function_model, "function 'local:AddK'"),
    "nested-subgraphs": (nested_if_model, "subgraph 'outer' > node 'o_out' (If)"),
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # onnx.save would try to write the external data
    return path


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_external_data_anywhere_is_refused_before_the_file_is_touched(tmp_path, monkeypatch, kind):
    make, where = MODELS[kind]
    path = _save(make(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    # Absent: the refusal is ours, not the checker's "should be stored in secret.bin".
    with pytest.raises(HawqError, match="keeps its data in an external file") as err:
        load_onnx(path)
    assert where in str(err.value) and "secret.bin" in str(err.value) and "\n" not in str(err.value)
    # Present next to the model and in the working directory: still refused, and never read.
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    secret.chmod(0)
    try:
        for call in (load_onnx, inspect_onnx, lambda p: load_onnx(p, check=False)):
            with pytest.raises(HawqError, match="keeps its data in an external file"):
                call(path)
        with pytest.raises(HawqError, match="keeps its data in an external file"):
            inspect_onnx(onnx.load(str(path), load_external_data=False))  # an in-memory model
    finally:
        secret.chmod(0o600)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_check_initializers_walks_every_tensor(kind):
    make, where = MODELS[kind]
    with pytest.raises(HawqError, match="model: .*keeps its data in an external file"):
        check_initializers(make(), "model")


def test_external_entries_without_the_flag_count_too(tmp_path):
    model = constant_model()
    model.graph.node[0].attribute[0].t.data_location = TensorProto.DEFAULT
    model.graph.node[0].attribute[0].t.raw_data = np.ones((2, 2), np.float32).tobytes()
    with pytest.raises(HawqError, match="external file"):
        check_initializers(model, "model")


def test_plain_initializer_message_is_kept(tmp_path):
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[_external("w", "weights.bin")])
    with pytest.raises(HawqError, match=r"m.onnx: initializer 'w' keeps its data in an external file \('weights.bin'\); "
                                        "give a self-contained model"):
        load_onnx(_save(model, tmp_path / "m.onnx"))


def test_only_the_external_tensor_matters(tmp_path):
    model = if_model()
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    then.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.full((2, 2), 3, np.float32)))
    path = _save(model, tmp_path / "ok.onnx")
    assert load_onnx(path).graph.node[0].op_type == "If"  # self-contained, subgraphs and all: loads
    assert inspect_onnx(path).op_counts == {"Add": 1, "If": 1}
    # The same model with one Constant in the else branch pointing at a file: refused.
    other = next(a.g for a in model.graph.node[0].attribute if a.name == "else_branch")
    other.node[0].attribute[0].t.CopyFrom(_external("moved", "elsewhere.bin"))
    with pytest.raises(HawqError, match="tensor 'moved' in node 'if0' .If. > attribute 'else_branch' > subgraph "
                                        "'else_branch' > node 'else_out' .Constant. > attribute 'value' keeps its "
                                        "data in an external file .'elsewhere.bin'."):
        inspect_onnx(model)


@pytest.mark.parametrize("kind", ["constant", "if-subgraph"])
def test_cli_inspect_refuses_in_one_line(tmp_path, kind):
    make, where = MODELS[kind]
    _save(make(), tmp_path / "m.onnx")
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())  # in the working directory
    r = subprocess.run([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "inspect", "m.onnx"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "external file" in lines[0], r.stderr
    assert where in lines[0] and "Traceback" not in r.stderr and r.stdout == ""
