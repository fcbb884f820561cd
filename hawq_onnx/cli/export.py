"""`hawq-onnx export`: the float ONNX model (the quantized export builds on it)."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import model_options


@click.command("export")
@model_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
def command(model_ref, weights, input_shape, out):
    """Export a model to ONNX (float, BatchNorm folded, dynamic batch)."""
    from hawq_onnx.artifacts import check_output_path
    from hawq_onnx.bn_fold import fold_batchnorm
    from hawq_onnx.export import float_onnx, save_onnx
    from hawq_onnx.model_source import load_model, parse_input_shape

    check_output_path(out, (weights,))
    loaded = load_model(model_ref, weights, parse_input_shape(input_shape))
    fold_batchnorm(loaded.module, loaded.spec.input_shape)
    proto = float_onnx(loaded.module, loaded.spec.input_shape)
    save_onnx(proto, out)
    click.echo(f"wrote {out} ({proto.ByteSize():,} bytes, opset {proto.opset_import[0].version})")
