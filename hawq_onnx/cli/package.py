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
@click.option("--full", is_flag=True,
              help="Also bundle the .onnx model (for a full ONNX Runtime or a later conversion); the default "
                   "bundle holds only what a minimal ONNX Runtime build needs.")
@click.option("--model", "model_ref", default=None, metavar="M",
              help="Zoo name or FILE.py:factory whose normalisation and class names go into the manifest "
                   "(no weights needed). Default: the ONNX metadata hawq_onnx.mean/std/class_names, if any.")
def command(model_path, out, report, as_zip, full, model_ref):
    """Bundle an ONNX model for ONNX Runtime and its minimal builds.

    Writes the ORT-format .ort (onnxruntime's converter, Fixed optimization style), the
    required-operators config for a minimal build (--include_ops_by_config) and manifest.json,
    after checking that the .ort loads and gives outputs identical to the .onnx; --full adds the
    .onnx. Prints what each file costs. Nothing is written when a check fails.
    """
    from hawq_onnx.api import package

    result = package(model_path, out, report=report, model_ref=model_ref, as_zip=as_zip, full=full)
    check = result.manifest["check"]
    is_zip = result.path.suffix == ".zip" and result.path.is_file()
    click.echo(f"wrote {result.path}" + (" (zip; compressed sizes)" if is_zip else ""))
    width = max(len(c.name) for c in result.costs)
    for c in result.costs:
        click.echo(f"  {c.name:<{width}}  {c.bytes:>10,} bytes  {100 * c.share:5.1f} %  {c.purpose}")
    headers = result.total_bytes - sum(c.bytes for c in result.costs)
    if headers:
        click.echo(f"  {'(zip headers)':<{width}}  {headers:>10,} bytes  {100 * headers / result.total_bytes:5.1f} %")
    click.echo(f"  {'total':<{width}}  {result.total_bytes:>10,} bytes")
    if result.size_note:
        click.echo(result.size_note)
    for name, size in result.left_out.items():
        click.echo(f"left out: {name} ({size:,} bytes; a minimal build does not load it): --full adds it")
    click.echo(f"check: .ort output bitwise identical to .onnx (max |diff| vs unoptimized .onnx "
               f"{check['max_abs_diff_vs_unoptimized_onnx']:.3g}); "
               f"{len(result.manifest['conversion']['operators'])} operators in the config")
