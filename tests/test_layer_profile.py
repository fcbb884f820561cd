"""layer_times: each layer's kernel time inside the running network, from ONNX Runtime's profiler."""

from __future__ import annotations

from pathlib import Path

import pytest

from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.model import load_model
from hawq_onnx.validation.layer_profile import layer_times
from hawq_onnx.validation.ort_baseline import ort_int8
from hawq_onnx.validation.ort_eval import file_io

LAYERS = ["stem", "block_conv1", "block_conv2", "down", "conv", "fc"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("layer_times")
    loaded = load_model("digits-cnn")
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    paths = {"float": d / "float.onnx", "int8": d / "int8.onnx"}
    save_onnx(float_onnx(loaded.module, loaded.spec.input_shape), paths["float"])
    ort_int8(paths["float"], load_data("digits", loaded.spec).calib, paths["int8"], file_io(paths["float"]))
    return paths


@pytest.mark.parametrize("batch_size", [1, 16])
def test_every_layer_gets_its_kernel_time_in_the_network(files, batch_size):
    float_t = layer_times(files["float"], batch_size=batch_size, threads=1, runs=20, warmup=3)
    int8_t = layer_times(files["int8"], batch_size=batch_size, threads=1, runs=20, warmup=3)
    assert list(float_t.layers) == LAYERS and list(int8_t.layers) == LAYERS
    assert all(ms > 0 for ms in (*float_t.layers.values(), *int8_t.layers.values()))
    assert set(int8_t.kernels.values()) == {"QLinearConv", "QGemm"}
    assert "QLinearConv" not in float_t.kernels.values()
    # What no layer runs is counted apart: the input's QuantizeLinear, the residual add.
    assert int8_t.other.get("QuantizeLinear", 0) > 0 and int8_t.other.get("QLinearAdd", 0) > 0
    for t in (float_t, int8_t):
        assert t.nodes_ms == pytest.approx(t.layers_ms + sum(t.other.values()))
        assert t.nodes_ms <= t.run_ms  # the kernels run inside the session's run
        assert t.to_json()["layers"] == t.layers


def test_bad_settings_and_files_are_one_line_errors(files, tmp_path):
    with pytest.raises(OptionError, match="batch_size"):
        layer_times(files["float"], batch_size=0)
    (tmp_path / "x.onnx").write_text("not a model")
    with pytest.raises(HawqError):
        layer_times(tmp_path / "x.onnx")
