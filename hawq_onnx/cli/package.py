"""`hawq-onnx package`: the deployable bundle (.onnx, .ort, operators config, manifest)."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import example


@click.command("package", epilog=example("hawq-onnx package runs/model.qdq.onnx --report runs/report.json --out runs/bundle"))
@click.argument("model_path", metavar="Q.onnx", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(), metavar="DIR",
              help="Bundle folder to write (an older bundle there is replaced). With --zip, or a path "
                   "ending in .zip, one archive: DIR.zip.")
@click.option("--report", default=None, type=click.Path(dir_okay=False), metavar="report.json",
              help="The JSON of `hawq-onnx validate --json`: its accuracy, latency and size figures go "
                   "into the manifest.")
@click.option("--zip", "as_zip", is_flag=True, help="Write one .zip archive instead of a folder.")
@click.option("--model", "model_ref", default=None, metavar="M",
              help="Zoo name or FILE.py:factory whose normalisation and class names go into the manifest "
                   "(no weights needed). Default: the ONNX metadata hawq_onnx.mean/std/class_names, if any.")
def command(model_path, out, report, as_zip, model_ref):
    """Bundle an ONNX model for ONNX Runtime and its minimal builds.

    Writes the .onnx (copied), the ORT-format .ort (onnxruntime's converter, Fixed
    optimization style), the required-operators config for a minimal build
    (--include_ops_by_config) and manifest.json, after checking that the .ort loads and gives
    outputs identical to the .onnx. Nothing is written when a check fails.
    """
    from hawq_onnx.api import package

    result = package(model_path, out, report=report, model_ref=model_ref, as_zip=as_zip)
    check = result.manifest["check"]
    click.echo(f"wrote {result.path}" + (" (zip)" if result.path.suffix == ".zip" and result.path.is_file() else ""))
    for name, size in result.files.items():
        click.echo(f"  {name:<36} {size:>12,} bytes")
    click.echo(f"check: .ort output bitwise identical to .onnx (max |diff| vs unoptimized .onnx "
               f"{check['max_abs_diff_vs_unoptimized_onnx']:.3g}); "
               f"{len(result.manifest['conversion']['operators'])} operators in the config")
