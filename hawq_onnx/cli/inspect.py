"""`hawq-onnx inspect`: the per-layer table of any ONNX model."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def command(model_path, as_json):
    """Per-layer weights, bits, MACs and bytes of an ONNX model."""
    from hawq_onnx.onnx_inspect import format_inspection, inspect_onnx

    ins = inspect_onnx(model_path)
    if as_json:
        click.echo(json.dumps(ins.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_inspection(ins))
