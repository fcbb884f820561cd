"""`hawq-onnx analyze`: per-layer Hessian sensitivity -> sensitivity.json (and a PNG chart)."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import (
    data_option,
    device_option,
    example,
    image_options,
    model_options,
    seed_option,
    show_progress,
)
from hawq_onnx.options import AnalyzeOptions

DEFAULTS = AnalyzeOptions()  # the CLI's defaults are the library's


@click.command("analyze", epilog=example("hawq-onnx analyze --out runs/sensitivity.json --plot runs/sensitivity.png"))
@model_options
@data_option
@image_options
@click.option("--batches", default=DEFAULTS.batches, show_default=True, type=int,
              help="Training batches the loss is averaged over.")
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=int,
              help="Samples per analysed batch.")
@click.option("--tol", "eig_tol", default=1e-3, show_default=True, type=float,
              help="Power iteration stops when the eigenvalue changes by less than this, relatively.")
@click.option("--max-iter", default=100, show_default=True, type=int, help="Power iterations at most.")
@click.option("--trace-tol", default=1e-2, show_default=True, type=float,
              help="Trace estimation stops when its standard error is below this fraction of the trace.")
@click.option("--max-probes", default=200, show_default=True, type=int, help="Hutchinson probes at most per layer.")
@click.option("--sketch", default=16, show_default=True, type=int,
              help="Hutch++ sketch size per layer (0: plain Hutchinson).")
@device_option
@seed_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output sensitivity.json.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Also write a per-layer bar chart (PNG).")
def command(model_ref, weights, input_shape, data, batches, batch_size, eig_tol, max_iter, trace_tol, max_probes,
            sketch, device, seed, out, plot):
    """Top Hessian eigenvalue and trace of every quantizable layer (HAWQ, HAWQ-V2)."""
    from hawq_onnx.api import analyze
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.sources.inputs import input_paths
    from hawq_onnx.sources.model import parse_input_shape

    inputs = input_paths(model_ref, weights, data)
    check_output_path(out, inputs)
    if plot:
        check_output_path(plot, inputs + (out,))
    options = AnalyzeOptions(batches=batches, batch_size=batch_size, eig_tol=eig_tol, max_iter=max_iter,
                             trace_tol=trace_tol, max_probes=max_probes, sketch=sketch, seed=seed, device=device)
    report = analyze(model_ref, data, options=options, weights=weights, input_shape=parse_input_shape(input_shape),
                     progress=show_progress())
    report.save(out)
    click.echo(f"{'layer':<22} {'params':>8} {'eigenvalue':>11} {'trace':>11} {'trace/param':>11}  converged")
    for layer in report.layers:
        flags = f"{'eig' if layer.eigen_converged else '-'}/{'trace' if layer.trace_converged else '-'}"
        note = "" if layer.status == "ok" else f"  ({layer.status})"
        click.echo(f"{layer.name:<22} {layer.params:>8,} {layer.top_eigenvalue:>11.4g} {layer.trace:>11.4g} "
                   f"{layer.trace_per_param:>11.3g}  {flags}{note}")
    click.echo(f"analysed {len(report.layers)} layers on {report.settings['samples']} training samples "
               f"in {report.seconds:.1f} s; wrote {out}")
    if plot:
        from hawq_onnx.sensitivity.plot import plot_sensitivity

        plot_sensitivity(report, plot)
        click.echo(f"wrote {plot}")
