"""`hawq-onnx quantize`: the whole pipeline in one command."""

from __future__ import annotations

import click

from hawq_onnx.cli._options import (
    batch_sizes_option,
    data_option,
    device_option,
    example,
    image_options,
    model_options,
    renamed,
    say,
    seed_option,
    show_progress,
    step_lr_option,
    weight_range_option,
)
from hawq_onnx.options import BASELINES, ORDERS, RUNTIMES, TARGETS, QuantizeOptions

# The CLI's defaults are the library's (QuantizeOptions), shown in --help as such.
DEFAULTS = QuantizeOptions()


def bits_text(bits: tuple[int, ...]) -> str:
    return ",".join(map(str, bits))


def _bits(value: str, allowed: tuple[int, ...], option: str) -> tuple[int, ...]:
    from hawq_onnx.errors import HawqError

    try:
        bits = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise HawqError(f"{option} {value!r} is not a comma-separated list of bit widths") from None
    if not bits or any(b not in allowed for b in bits):
        raise HawqError(f"{option} {value!r}: choose from {', '.join(map(str, allowed))}")
    return bits


@click.command("quantize", epilog=example("hawq-onnx quantize --out runs/demo"))
@model_options
@data_option
@image_options
@click.option("--budget", default="8x", show_default=True,
              help="Weight size: compression ratio against float32 (13x) or bytes (800KB, 1.2MiB).")
@click.option("--w-bits", default=bits_text(DEFAULTS.allocate.w_bits), show_default=True,
              help="Candidate weight bits (2, 3, 4, 8).")
@click.option("--a-bits", default=bits_text(DEFAULTS.allocate.a_bits), show_default=True,
              help="Candidate activation bits inside the network (4, 8); first and last layer stay 8-bit. "
                   "Offered 4,8 without a BOPs limit, the solver takes 8 everywhere, so quantize offers 4 "
                   "(allocate's 4,8 is for choosing under its --bops).")
@weight_range_option
@click.option("--epochs", type=float, default=None, help="Fine-tuning epochs, all stages together [default: 5].")
@click.option("--order", type=click.Choice(ORDERS), default="hawq", show_default=True,
              help="hawq: most sensitive blocks first; single: all at once; ptq: calibration only.")
@click.option("--lr", type=float, default=None, help="Peak fine-tuning learning rate [default: the optimizer's own].")
@step_lr_option
@click.option("--analysis-batches", "batches", type=int, default=DEFAULTS.analyze.batches, show_default=True,
              help="Batches the Hessian analysis averages over (analyze's --batches).")
@renamed("--batches", "--analysis-batches", "batches", type=int)
@click.option("--analysis-batch-size", "batch_size", type=int, default=DEFAULTS.analyze.batch_size,
              show_default=True, help="Batch size of the Hessian analysis (analyze's --batch-size).")
@renamed("--batch-size", "--analysis-batch-size", "batch_size", type=int)
@click.option("--target", type=click.Choice(TARGETS), default="ort-cpu", show_default=True,
              help="ort-cpu: ONNX Runtime, stored for this CPU (ort-vnni or ort-avx2); openvino; compact.")
@click.option("--max-latency", default=None, metavar="L",
              help="Latency limit of the layers on the target's runtime, at every --latency-batch-sizes: a fraction "
                   "of the float layers' time (0.8x) or a time (2ms); layers faster in float may stay float.")
@click.option("--latency-batch-sizes", default="1,64", show_default=True, callback=batch_sizes_option,
              help="Batch sizes the latency limit holds at.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Validate under this runtime [default: the target's: openvino for --target openvino, else ort].")
@click.option("--baseline", type=click.Choice(BASELINES), default=None, help="Also validate ONNX Runtime's own int8.")
@click.option("--runs", type=int, default=50, show_default=True, help="Latency runs per model and batch size (0: skip).")
@click.option("--max-drop", type=float, default=None, help="Exit 1 when top-1 drops by more points than this.")
@device_option
@seed_option
@click.option("--force", is_flag=True, help="Recompute every stage even when its inputs did not change.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model_ref, weights, input_shape, data, budget, w_bits, a_bits, weight_range, epochs, order, lr, step_lr,
            batches, batch_size, target, max_latency, latency_batch_sizes, runtime, baseline, runs, max_drop, device, seed, force, out):
    """Analyze, allocate, fine-tune, export and validate: every artefact in OUT.

    Without --model and --data it runs the embedded default: the zoo's digits CNN on
    scikit-learn's digits.
    """
    from hawq_onnx.options import (
        ACTIVATION_BITS,
        WEIGHT_BITS,
        AllocateOptions,
        AnalyzeOptions,
        ExportOptions,
        FinetuneOptions,
        ValidateOptions,
    )
    from hawq_onnx.pipeline import quantize
    from hawq_onnx.sources.model import parse_input_shape

    options = QuantizeOptions(
        analyze=AnalyzeOptions(batches=batches, batch_size=batch_size, seed=seed, device=device),
        allocate=AllocateOptions(w_bits=_bits(w_bits, WEIGHT_BITS, "--w-bits"),
                                 a_bits=_bits(a_bits, ACTIVATION_BITS, "--a-bits"), weight_range=weight_range,
                                 max_latency=max_latency, latency_batch_sizes=latency_batch_sizes),
        finetune=FinetuneOptions(order=order, epochs=epochs, lr=lr, step_lr=step_lr, seed=seed, device=device),
        export=ExportOptions(target=target),
        validate=ValidateOptions(runs=runs, runtime=runtime, baseline=baseline, max_drop=max_drop))
    s = quantize(model_ref, data, budget=budget, out=out, options=options, weights=weights,
                 input_shape=parse_input_shape(input_shape), force=force, progress=show_progress(), say=say)
    click.echo("")
    click.echo(f"top-1: float {100 * s.float_top1:.2f} %, exported ({s.runtime}) {100 * s.quant_top1:.2f} % "
               f"({100 * (s.quant_top1 - s.float_top1) + 0.0:+.2f} points)")
    if s.finetuned_top1 is not None:
        cost = ("" if s.export_cost_points is None else
                f"; export cost {s.export_cost_points + 0.0:+.2f} points (fine-tuned minus exported)")
        click.echo(f"       fine-tuned (PyTorch, plan grids only) {100 * s.finetuned_top1:.2f} %{cost}")
    click.echo(f"weights: {s.weight_ratio:.2f}x smaller than float32; file: {s.file_ratio:.2f}x smaller")
    if s.latency_speedup:
        parts = []
        for b, v in sorted(s.latency_speedup.items()):
            st = s.latency_spread.get(b) or {}
            part = f"{v:.2f}x at batch {b}"
            if st.get("rounds", 0) > 1:
                part += (f" (middle half {st['q25']:.2f}-{st['q75']:.2f}x over {st['rounds']} rounds"
                         f"{', unstable' if st.get('stable') is False else ''})")
            parts.append(part)
        click.echo(f"latency ({s.runtime}, against float): " + ", ".join(parts))
    if s.fake_quant_agreement is not None:
        click.echo(f"exported ({s.runtime}) against its PyTorch reference (plan + export grids): same top-1 on "
                   f"{100 * s.fake_quant_agreement:.2f} % of the test samples")
    click.echo(f"report: {s.files['report.md']} ({s.seconds:.0f} s; reused: {', '.join(s.reused) or 'nothing'})")
