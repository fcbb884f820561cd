"""`hawq-onnx inspect`: the per-layer table of any ONNX model, or a bundle's manifest."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model_path", metavar="MODEL.onnx|BUNDLE", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the table (or the bundle manifest) as JSON.")
def command(model_path, as_json):
    """Per-layer weights, bits, MACs and bytes of an ONNX model, or a `package` bundle (folder or .zip)."""
    from hawq_onnx.core.onnx_inspect import format_inspection, inspect_onnx
    from hawq_onnx.deploy.bundle import format_manifest, is_bundle, read_bundle

    if is_bundle(model_path):
        manifest = read_bundle(model_path).manifest
        click.echo(json.dumps(manifest, indent=2, sort_keys=True) if as_json else format_manifest(manifest))
        return
    ins = inspect_onnx(model_path)
    click.echo(json.dumps(ins.to_json(), indent=2, sort_keys=True) if as_json else format_inspection(ins))
