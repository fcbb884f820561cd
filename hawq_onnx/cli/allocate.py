"""`hawq-onnx allocate`: sensitivity.json -> plan.json (per-layer bits under a size budget)."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import example, weight_range_option
from hawq_onnx.options import METRICS, SCALE_METHODS, AllocateOptions

DEFAULTS = AllocateOptions()  # the CLI's defaults are the library's


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


@click.command("allocate", epilog=example(
    "hawq-onnx allocate --sensitivity runs/sensitivity.json --budget 8x --out runs/plan.json"))
@click.option("--sensitivity", required=True, type=click.Path(dir_okay=False), help="sensitivity.json from analyze.")
@click.option("--budget", required=True, metavar="SIZE",
              help="Weight budget: ratio against float32 (13x, 13.11x) or bytes (800KB, 0.8MB, 1.2MiB, 819200; "
                   "KB = 1000, KiB = 1024 bytes).")
@click.option("--w-bits", default=",".join(map(str, DEFAULTS.w_bits)), show_default=True,
              help="Candidate weight bits (from 2,3,4,8).")
@click.option("--a-bits", default=",".join(map(str, DEFAULTS.a_bits)), show_default=True,
              help="Candidate input activation bits (from 4,8); without --bops the solver takes 8 where offered.")
@click.option("--metric", type=click.Choice(METRICS), default="trace", show_default=True,
              help="Curvature: Tr(H)/n (HAWQ-V2/V3) or the top eigenvalue (HAWQ).")
@click.option("--scale-method", type=click.Choice(SCALE_METHODS), default="maxabs", show_default=True,
              help="Weight scale whose ||Q(W) - W||^2 prices a choice.")
@weight_range_option
@click.option("--bops", default=None, metavar="N",
              help="Optional BOPs limit (MACs x w_bits x a_bits): 0.3G, 300M, 3e8, or 40x (float 32x32 BOPs / 40).")
@click.option("--tie", multiple=True, metavar="A,B[,C]", help="Layers (glob patterns allowed) that share one choice.")
@click.option("--pin", multiple=True, metavar="LAYER=W/A", help="Fix a layer's bits (glob patterns allowed).")
@click.option("--no-pin-ends", is_flag=True, help="Let the first and last layer be allocated too (default: 8/8).")
@click.option("--keep-float", multiple=True, metavar="LAYER", help="Keep a layer float (weights and input).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output plan.json.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Also write the Pareto frontier as PNG.")
def command(sensitivity, budget, w_bits, a_bits, metric, scale_method, weight_range, bops, tie, pin, no_pin_ends,
            keep_float, out, plot):
    """Choose each layer's weight and activation bits: the lowest total Omega within the budget (exact)."""
    import time

    from hawq_onnx.allocation.cost_model import curvature
    from hawq_onnx.allocation.units import (
        format_bops,
        format_bytes,
        parse_bits,
        parse_pin,
    )
    from hawq_onnx.api import allocate
    from hawq_onnx.errors import HawqError
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.io.sensitivity_report import load_sensitivity
    from hawq_onnx.options import ACTIVATION_BITS, WEIGHT_BITS

    check_output_path(out, (sensitivity,))
    if plot is not None:
        check_output_path(plot, (sensitivity, out))
    pins: dict[str, tuple[int, int]] = {}
    for text in pin:
        layer, bits = parse_pin(text)
        if pins.get(layer, bits) != bits:
            raise HawqError(f"--pin gives {layer} two precisions; give it one")
        pins[layer] = bits
    options = AllocateOptions(w_bits=parse_bits(w_bits, WEIGHT_BITS, "--w-bits"),
                              a_bits=parse_bits(a_bits, ACTIVATION_BITS, "--a-bits"), metric=metric,
                              scale_method=scale_method, weight_range=weight_range, bops=bops, ties=tuple(tie),
                              pins=pins, pin_ends=not no_pin_ends, keep_float=tuple(_split(keep_float)))
    report = load_sensitivity(sensitivity)
    start = time.perf_counter()
    plan = allocate(sensitivity, budget, options=options)
    seconds = time.perf_counter() - start

    fixed = plan.allocation["pinned"]
    tie_of = {n: k for k, group in enumerate(plan.allocation["ties"], 1) for n in group}
    curv = "Tr/n" if metric == "trace" else "lambda_max"
    width = max(len(layer.name) for layer in plan.layers)
    click.echo(f"{'layer':<{width}}  {'params':>9}  {curv:>10}  {'w':>5}  {'a':>5}  {'Omega':>10}  note")
    for layer in plan.layers:
        note = " ".join(filter(None, ["fixed" if layer.name in fixed else "",
                                      f"tie{tie_of[layer.name]}" if layer.name in tie_of else ""]))
        w, a = ("float" if b is None else str(b) for b in (layer.w_bits, layer.a_bits))
        click.echo(f"{layer.name:<{width}}  {layer.params:>9,}  {curvature(report.layer(layer.name), metric):>10.3g}  "
                   f"{w:>5}  {a:>5}  {layer.omega:>10.3g}  {note}")
    t = plan.totals
    click.echo(f"weights {format_bytes(t['weight_bytes'])} nominal ({t['ratio']:.2f}x float32, budget "
               f"{plan.budget['text']} = {format_bytes(plan.budget['bytes'])}), {format_bytes(t['storage_bytes'])} "
               f"stored; Omega {t['omega']:.4g}; BOPs {format_bops(t['bops'])}"
               + (f" ({t['bops_ratio']:.1f}x fewer than float)" if t["bops_ratio"] else ""))
    click.echo(f"solved by {plan.allocation['method']} in {seconds:.2f} s; Pareto frontier "
               f"{plan.allocation['pareto_points']} points ({plan.allocation['metric']} metric, terms: "
               f"{', '.join(plan.allocation['terms'])})")
    if "note" in plan.budget:
        click.echo(f"note: {plan.budget['note']}")
    plan.save(out)
    click.echo(f"wrote {out}")
    if plot is not None:
        from hawq_onnx.allocation.plot import plot_pareto

        plot_pareto(plan, plot)
        click.echo(f"wrote {plot}")
