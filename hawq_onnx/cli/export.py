"""`hawq-onnx export`: the float ONNX model, or with --plan/--quantized-pt the mixed-precision QDQ model."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import (
    data_option,
    example,
    image_options,
    model_options,
    renamed,
    show_progress,
)
from hawq_onnx.options import TARGETS


@click.command("export", epilog=example("hawq-onnx export --quantized-pt runs/quantized.pt --out runs/model.qdq.onnx",
                                         "hawq-onnx export --out runs/model.float.onnx"))
@model_options
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="plan.json with scales (from finetune): write the quantized QDQ model.")
@click.option("--quantized-pt", "quantized_path", default=None, type=click.Path(dir_okay=False),
              help="quantized.pt from finetune: its fine-tuned weights and calibrated plan (--plan optional).")
@renamed("--quantized", "--quantized-pt", "quantized_path", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGETS), default="ort-cpu", show_default=True,
              help="ort-cpu: integer kernels under ONNX Runtime CPU, stored for this CPU (ort-vnni: VNNI or ARM; "
                   "ort-avx2: x86 without VNNI), sub-byte weights packed and widened by Cast; openvino: OpenVINO's "
                   "CPU plugin (no INT2); compact: plain INT4/INT2/uint4 Q/DQ.")
@data_option
@image_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .onnx file.")
@click.option("--plan-out", default=None, type=click.Path(dir_okay=False),
              help="Also write the plan as exported: with the 8-bit grids between layers, named in PyTorch, "
                   "so that the fake-quant model of this plan computes what the file computes.")
def command(model_ref, weights, input_shape, plan_path, quantized_path, target, data, out, plan_out):
    """Export a model to ONNX: float (BatchNorm folded, dynamic batch), or quantized by a plan.

    The quantized export calibrates the 8-bit tensors between planned layers (residual adds,
    pooling, conv outputs) on --data (default: the data the plan was calibrated on).
    """
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.onnx_export.float_onnx import save_onnx
    from hawq_onnx.sources.inputs import input_paths
    from hawq_onnx.sources.model import parse_input_shape

    inputs = input_paths(model_ref, weights, data, plan_path, quantized_path)
    check_output_path(out, inputs)
    if plan_out is not None:
        from pathlib import Path

        if Path(plan_out).resolve() == Path(out).resolve():
            raise click.UsageError("--plan-out and --out name the same file")
        check_output_path(plan_out, inputs)
    shape = parse_input_shape(input_shape)
    if plan_path is None and quantized_path is None:
        from hawq_onnx.api import export

        if data is not None or target != "ort-cpu" or plan_out is not None:
            raise click.UsageError("--data, --target and --plan-out apply to the quantized export "
                                   "(--plan or --quantized-pt)")
        exported = export(model_ref, weights=weights, input_shape=shape)
        exported.save(out)
        click.echo(f"wrote {out} ({exported.file_bytes:,} bytes, opset {exported.opset})")
        return

    from hawq_onnx.onnx_export.qdq import export_plan

    exported = export_plan(model_ref, weights, shape, plan_path, quantized_path, target=target, data=data,
                           progress=show_progress())
    save_onnx(exported.model, out)
    if plan_out is not None:
        from hawq_onnx.io.plan import save_plan

        save_plan(exported.plan, plan_out)
    layers = ", ".join(f"{k}: {v}" for k, v in exported.bits_histogram().items())
    click.echo(f"wrote {out} ({exported.file_bytes:,} bytes, opset {exported.opset}, target {exported.target})")
    click.echo(f"  layers by bits (w weights, a activations, f float): {layers}")
    click.echo(f"  inter-layer tensors calibrated: {exported.calibration_sites} "
               f"on {exported.calibration_samples} samples; {len(exported.plan.region_grids)} grid(s) between "
               f"layers named in PyTorch" + (f", in {plan_out}" if plan_out else " (--plan-out writes them)"))
    if exported.unplanned:
        click.echo(f"  not in the plan, left float: {len(exported.unplanned)} (warnings above)")
