"""`hawq-onnx inspect`: the per-layer table of any ONNX model, or a bundle's manifest."""

from __future__ import annotations

import json

import click

from hawq_onnx.cli._options import example


@click.command("inspect", epilog=example("hawq-onnx inspect runs/model.qdq.onnx"))
@click.argument("model_path", metavar="MODEL.onnx|BUNDLE", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the table (or the bundle manifest) as JSON.")
def command(model_path, as_json):
    """Per-layer weights, bits, MACs and bytes of an ONNX model, or a `package` bundle (folder or .zip)."""
    from hawq_onnx.api import inspect
    from hawq_onnx.core.inspection_format import format_inspection
    from hawq_onnx.deploy.bundle import Bundle, format_manifest

    ins = inspect(model_path)
    if isinstance(ins, Bundle):
        click.echo(json.dumps(ins.manifest, indent=2, sort_keys=True) if as_json else format_manifest(ins.manifest))
        return
    click.echo(json.dumps(ins.to_json(), indent=2, sort_keys=True) if as_json else format_inspection(ins))
