"""`hawq-onnx finetune`: plan.json -> quantized.pt and the plan with its final scales."""

from __future__ import annotations

from pathlib import Path

import click

from hawq_onnx.cli._options import (
    data_option,
    device_option,
    example,
    image_options,
    model_options,
    seed_option,
    show_progress,
    step_lr_option,
)
from hawq_onnx.options import OPTIMIZERS, ORDERS, FinetuneOptions

DEFAULTS = FinetuneOptions()  # the CLI's defaults are the library's


def default_plan_out(out: str) -> Path:
    """quantized.pt -> quantized.plan.json, beside it."""
    p = Path(out)
    return p.with_name(p.stem + ".plan.json")


@click.command("finetune", epilog=example("hawq-onnx finetune --plan runs/plan.json --out runs/quantized.pt"))
@model_options
@data_option
@image_options
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="plan.json from allocate.")
@click.option("--sensitivity", default=None, type=click.Path(dir_okay=False),
              help="sensitivity.json: order blocks by Tr(H)/n instead of the plan's Omega.")
@click.option("--order", type=click.Choice(ORDERS), default="hawq", show_default=True,
              help="hawq: most sensitive blocks first, in stages; single: all at once; ptq: calibration only.")
@click.option("--epochs", type=float, default=None, help="Training budget in epochs, all stages together [default: 5].")
@click.option("--steps", type=int, default=None, help="Training budget in optimizer steps (instead of --epochs).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
              help="For the weights (AdamW, or SGD with momentum); step sizes always use Adam in log space.")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate, warm-up then cosine [default: 1e-4 adam, 3e-4 sgd].")
@step_lr_option
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True,
              help="Samples per training step.")
@click.option("--distill/--no-distill", default=True, show_default=True, help="Distil from the float model.")
@click.option("--distill-weight", type=float, default=0.5, show_default=True,
              help="Share of the distillation term in the loss, in [0, 1] (the rest is cross-entropy on the labels).")
@click.option("--temperature", type=float, default=2.0, show_default=True,
              help="Softmax temperature of the distillation term.")
@click.option("--data-fraction", type=float, default=1.0, show_default=True,
              help="Train on this fraction of the training split.")
@seed_option
@device_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output quantized.pt.")
@click.option("--plan-out", default=None, type=click.Path(dir_okay=False),
              help="Output calibrated plan [default: <out stem>.plan.json beside --out].")
def command(model_ref, weights, input_shape, data, plan_path, sensitivity, order, epochs, steps, optimizer, lr,
            step_lr, batch_size, distill, distill_weight, temperature, data_fraction, seed, device, out, plan_out):
    """Quantize a model as its plan says and fine-tune it (HAWQ order), or calibrate only (ptq)."""
    from hawq_onnx.api import finetune
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.sources.inputs import input_paths
    from hawq_onnx.sources.model import parse_input_shape

    plan_out = plan_out or str(default_plan_out(out))
    inputs = input_paths(model_ref, weights, data, plan_path, sensitivity)
    check_output_path(out, inputs)
    check_output_path(plan_out, inputs + (out,))
    options = FinetuneOptions(order=order, epochs=epochs, steps=steps, optimizer=optimizer, lr=lr, step_lr=step_lr,
                              batch_size=batch_size, distill=distill, distill_weight=distill_weight,
                              temperature=temperature, data_fraction=data_fraction, seed=seed, device=device)
    result = finetune(model_ref, plan_path, data, options=options, sensitivity=sensitivity, weights=weights,
                      input_shape=parse_input_shape(input_shape), progress=show_progress())
    result.save(out)
    result.plan.save(plan_out)
    trained = sum(h["steps"] for h in result.history)
    drop = 100 * (result.quant_accuracy - result.float_accuracy)
    click.echo(f"float top-1 {100 * result.float_accuracy:.2f} %, fine-tuned (PyTorch, plan grids only) top-1 "
               f"{100 * result.quant_accuracy:.2f} % ({drop:+.2f} points) on {result.eval_samples} test samples")
    click.echo(f"{order}: {len(result.history)} stage(s), {trained} steps, {result.seconds:.1f} s on {device}")
    click.echo(f"wrote {out} and {plan_out}")
