"""`hawq-onnx validate`: accuracy, latency, size and integer kernels of a quantized ONNX model."""

from __future__ import annotations

import json
import sys

import click

from hawq_onnx.cli._options import (
    batch_sizes_option,
    data_option,
    example,
    image_options,
    input_shape_option,
    renamed,
    show_progress,
)
from hawq_onnx.options import BASELINES, RUNTIMES


ONNX_FILE = click.Path(dir_okay=False)


# --float-onnx and --quantized-onnx are required, but checked by `renamed`: the old spellings count.
@click.command("validate", epilog=example(
    "hawq-onnx validate --float-onnx runs/model.float.onnx --quantized-onnx runs/model.qdq.onnx "
    "--json runs/report.json"))
@click.option("--float-onnx", "float_path", default=None, type=ONNX_FILE, help="Float ONNX model.  [required]")
@renamed("--float", "--float-onnx", "float_path", required=True, type=ONNX_FILE)
@click.option("--quantized-onnx", "quant_path", default=None, type=ONNX_FILE,
              help="Quantized ONNX model (from export).  [required]")
@renamed("--quant", "--quantized-onnx", "quant_path", required=True, type=ONNX_FILE)
@data_option
@image_options
@click.option("--model", "model_ref", default=None, metavar="M",
              help="Take input shape and normalisation from this model (zoo name or FILE.py:factory) "
                   "instead of the float ONNX file.")
@input_shape_option
@click.option("--threads", type=int, default=2, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--batch-sizes", default="1,64", show_default=True, callback=batch_sizes_option, help="Latency batch sizes.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per model and batch size (0: no latency).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Warm-up runs per model and batch size.")
@click.option("--provider", default="cpu", show_default=True,
              help="ONNX Runtime execution provider (cpu, cuda, ... or a full name); must be installed.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="ort", show_default=True,
              help="Measure under ONNX Runtime, or OpenVINO's CPU plugin (pip install 'hawq-onnx[openvino]').")
@click.option("--baseline", type=click.Choice(BASELINES), default=None,
              help="Also quantize the float model with ONNX Runtime's quantize_static (QDQ, u8/s8 per channel, MinMax).")
@click.option("--baseline-out", type=click.Path(dir_okay=False), default=None, help="Keep the baseline model here.")
@click.option("--sensitivity", type=click.Path(dir_okay=False), default=None, help="sensitivity.json from `hawq-onnx analyze`.")
@click.option("--limit", type=int, default=None, metavar="N", help="Evaluate only the first N test samples.")
@click.option("--eval-batch-size", type=int, default=256, show_default=True, help="Batch size for the accuracy runs.")
@click.option("--json", "json_out", default=None, metavar="FILE",
              help="Write the result as JSON to FILE ('-': to stdout, the table then goes to stderr).")
@click.option("--report", "report_out", default=None, type=click.Path(dir_okay=False),
              help="Write a Markdown report here, with PNG plots beside it.")
@click.option("--max-drop", type=float, default=None, metavar="P",
              help="Exit with status 1 when the top-1 drop exceeds P percentage points (after writing the reports).")
def command(float_path, quant_path, data, model_ref, input_shape, threads, batch_sizes, runs, warmup, provider,
            runtime, baseline, baseline_out, sensitivity, limit, eval_batch_size, json_out, report_out, max_drop):
    """Measure a quantized ONNX model against its float original under ONNX Runtime or OpenVINO.

    The test split of --data is evaluated. Without --model and --data: the default model's data
    (digits), normalised as the file's metadata says, else as the default model (digits-cnn).
    """
    from hawq_onnx.api import validate
    from hawq_onnx.io.atomic import check_output_path
    from hawq_onnx.options import ValidateOptions
    from hawq_onnx.sources.inputs import input_paths
    from hawq_onnx.sources.model import parse_input_shape
    from hawq_onnx.validation.report import format_table, plot_paths, write_markdown
    from hawq_onnx.validation.report_origin import origin_beside

    inputs = input_paths(model_ref, None, data, float_path, quant_path, sensitivity)
    for out in (json_out if json_out != "-" else None, report_out, baseline_out,
                *(plot_paths(report_out) if report_out else ())):
        if out is not None:
            check_output_path(out, inputs)
    options = ValidateOptions(threads=threads, batch_sizes=batch_sizes, runs=runs, warmup=warmup, provider=provider,
                              runtime=runtime, baseline=baseline, limit=limit, eval_batch_size=eval_batch_size, max_drop=max_drop)
    result = validate(float_path, quant_path, data, options=options, model=model_ref,
                      input_shape=parse_input_shape(input_shape), sensitivity=sensitivity, baseline_out=baseline_out,
                      progress=show_progress())
    to_stdout = json_out == "-"
    click.echo(format_table(result), err=to_stdout)
    if to_stdout:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True, allow_nan=False))
    elif json_out:
        result.save(json_out)
        click.echo(f"wrote {json_out}", err=True)
    if report_out:
        written = write_markdown(result, report_out, origin_beside(quant_path, sensitivity))
        click.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)
    sys.stdout.flush()
    result.check_gate()
