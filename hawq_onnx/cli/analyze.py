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
from hawq_onnx.options import ACTIVATION_BITS, STOPPINGS, WEIGHT_BITS, AllocateOptions, AnalyzeOptions

DEFAULTS = AnalyzeOptions()  # the CLI's defaults are the library's
ALLOCATE = DEFAULTS.settle_allocation


@click.command("analyze", epilog=example("hawq-onnx analyze --out runs/sensitivity.json --plot runs/sensitivity.png",
                                                    "hawq-onnx analyze --settle-for 13x --a-bits 4 --out runs/sensitivity.json"))
@model_options
@data_option
@image_options
@click.option("--batches", default=DEFAULTS.batches, show_default=True, type=int,
              help="Training batches the loss is averaged over.")
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=int,
              help="Samples per analysed batch.")
@click.option("--stopping", type=click.Choice(STOPPINGS), default=DEFAULTS.stopping, show_default=True,
              help="decision: refine each trace until more precision cannot change the plans at --settle-for; "
                   "precision: refine every trace to --trace-tol.")
@click.option("--settle-for", default=",".join(DEFAULTS.settle_for), show_default=True, metavar="BUDGETS",
              help="Budgets (13x, 800KB; comma-separated) whose plans the traces are settled for.")
@click.option("--w-bits", default=",".join(map(str, ALLOCATE.w_bits)), show_default=True,
              help="Decision stopping: the weight bits the plans may choose (as allocate's --w-bits).")
@click.option("--a-bits", default=",".join(map(str, ALLOCATE.a_bits)), show_default=True,
              help="Decision stopping: the activation bits the plans may choose (as allocate's --a-bits).")
@click.option("--eigenvalues/--no-eigenvalues", default=DEFAULTS.eigenvalues, show_default=True,
              help="Also HAWQ's top Hessian eigenvalue per layer (power iteration; allocate --metric eigenvalue).")
@click.option("--tol", "eig_tol", default=DEFAULTS.eig_tol, show_default=True, type=float,
              help="Power iteration stops when the eigenvalue changes by less than this, relatively.")
@click.option("--max-iter", default=DEFAULTS.max_iter, show_default=True, type=int, help="Power iterations at most.")
@click.option("--trace-tol", default=DEFAULTS.trace_tol, show_default=True, type=float,
              help="Precision stopping: a trace is done when its standard error is below this fraction of it.")
@click.option("--max-probes", default=DEFAULTS.max_probes, show_default=True, type=int,
              help="Hutchinson probes at most per layer.")
@click.option("--sketch", default=DEFAULTS.sketch, show_default=True, type=int,
              help="Hutch++ sketch size (0: plain Hutchinson): every layer's under precision stopping, only the "
                   "layers that need many probes under decision stopping.")
@device_option
@seed_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output sensitivity.json.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Also write a per-layer bar chart (PNG).")
def command(model_ref, weights, input_shape, data, batches, batch_size, stopping, settle_for, w_bits, a_bits,
            eigenvalues, eig_tol, max_iter, trace_tol, max_probes, sketch, device, seed, out, plot):
    """Hessian trace (HAWQ-V2) and, with --eigenvalues, top eigenvalue (HAWQ) of every quantizable layer."""
    from hawq_onnx.allocation.units import parse_bits
    from hawq_onnx.api import analyze
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.sources.inputs import input_paths
    from hawq_onnx.sources.model import parse_input_shape

    inputs = input_paths(model_ref, weights, data)
    check_output_path(out, inputs)
    if plot:
        check_output_path(plot, inputs + (out,))
    question = AllocateOptions(w_bits=parse_bits(w_bits, WEIGHT_BITS, "--w-bits"),
                               a_bits=parse_bits(a_bits, ACTIVATION_BITS, "--a-bits"))
    options = AnalyzeOptions(batches=batches, batch_size=batch_size, stopping=stopping,
                             settle_for=tuple(b.strip() for b in settle_for.split(",") if b.strip()),
                             settle_allocation=question, eigenvalues=eigenvalues, eig_tol=eig_tol,
                             max_iter=max_iter, trace_tol=trace_tol, max_probes=max_probes, sketch=sketch, seed=seed,
                             device=device)
    report = analyze(model_ref, data, options=options, weights=weights, input_shape=parse_input_shape(input_shape),
                     progress=show_progress())
    report.save(out)
    settled = report.settings.get("stopping") == "decision"
    click.echo(f"{'layer':<22} {'params':>8} {'eigenvalue':>11} {'trace':>11} {'+-':>8} {'probes':>6} "
               f"{'trace/param':>11}  {'settled' if settled else 'converged'}")
    for layer in report.layers:
        eigen = "-" if layer.top_eigenvalue is None else f"{layer.top_eigenvalue:.4g}"
        flags = (("yes" if layer.trace_converged else "no") if settled else
                 f"{'eig' if layer.eigen_converged else '-'}/{'trace' if layer.trace_converged else '-'}")
        note = "" if layer.status == "ok" else f"  ({layer.status})"
        click.echo(f"{layer.name:<22} {layer.params:>8,} {eigen:>11} {layer.trace:>11.4g} "
                   f"{layer.trace_std_error:>8.2g} {layer.trace_probes:>6} {layer.trace_per_param:>11.3g}  {flags}{note}")
    if settled:
        target = report.settings["settled_for"]
        state = "settled" if report.settings["settled"] else "NOT settled (probe limit reached)"
        click.echo(f"traces {state} for the plans at {', '.join(target['budgets']) or 'no budget'} "
                   f"(w_bits {','.join(map(str, target['w_bits']))}, a_bits {','.join(map(str, target['a_bits']))})"
                   + (f"; left out: {', '.join(target['skipped_budgets'])} (below the smallest possible size)"
                      if target.get("skipped_budgets") else ""))
    click.echo(f"analysed {len(report.layers)} layers on {report.settings['samples']} training samples "
               f"in {report.seconds:.1f} s; wrote {out}")
    if plot:
        from hawq_onnx.sensitivity.plot import plot_sensitivity

        plot_sensitivity(report, plot)
        click.echo(f"wrote {plot}")
