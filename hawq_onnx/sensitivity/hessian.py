"""Per-layer Hessian sensitivity: the top eigenvalue and the trace of each layer's Hessian block.

For every quantizable layer i (Conv1d/Conv2d/Linear, BN folded) and the training loss
L = sum_b (n_b / N) L_b over the analysis batches (model in eval mode), on the block
H_i = d^2 L / dW_i^2:

- top eigenvalue (HAWQ): power iteration v <- H_i v / ||H_i v||, eigenvalue = v^T H_i v (the
  normalised Rayleigh quotient), stopped when it changes by less than ``eig_tol`` relatively or
  after ``max_iter`` products. It finds the eigenvalue of largest magnitude and keeps its sign:
  a negative one is reported with status "indefinite", a block with H_i v = 0 with status "zero".
- trace (HAWQ-V2): Hutchinson's estimator E[z^T H_i z] = tr(H_i), Rademacher z, with the
  variance reduction of Hutch++ (Meyer, Musco, Musco, Woodruff 2021): with Q an orthonormal
  basis of H_i S for a random sketch S, tr(H_i) = tr(Q^T H_i Q) + tr((I - QQ^T) H_i (I - QQ^T))
  exactly; the first term is computed, the second estimated by Hutchinson with deflated probes
  z - Q Q^T z. Probes continue until the standard error is below ``trace_tol`` x |trace| (at
  least ``min_probes``, at most ``max_probes``). ``sketch=0`` is plain Hutchinson. The sketch also
  gives the Ritz vector that starts the power iteration, so it converges in a few products.
- activation trace (HAWQ-V2 weighs activations too): Hutchinson's estimate of the trace of the
  loss Hessian w.r.t. the layer's INPUT as the layer sees it, per sample (the mean of the
  per-sample traces), plus the mean per-sample ||Q(x) - x||^2 at 4 and 8 activation bits.

How the products are formed. A layer's output o = f(x, W) (bias aside) is linear in W and in x,
so the block is a sandwich around the Hessian w.r.t. the output, exactly, whatever the rest of
the model: H_i v = J^T (d^2 L / do^2) (J v) with J v = f(x, v) and J^T g the layer's weight
gradient; for the input, z^T H_x z = u^T (d^2 L / do^2) u with u = f(z, W). (d^2 L / do^2) u is
one double backward through the first-order graph dL/do, built ONCE per batch with
create_graph=True and reused (retain_graph) by every product of every layer. A layer called
more than once per forward pass feeds its own later input, so o is not linear in W there: its
block is taken by double backward w.r.t. W itself, from the same graph.

Ops without a double backward. The graphs are built under analysis forms (attention on the math
backend, hardsigmoid by a stand-in with aten's values and derivative; same Hessian, see
:mod:`hawq_onnx.sensitivity.analysis_forms`). A layer whose double backward still meets an op
without one ("derivative for ... is not implemented", once_differentiable) takes central finite
differences of gradients instead (:mod:`hawq_onnx.sensitivity.finite_differences`), and the
report says so per layer (``hessian_product``), with the measured error of those products
against exact ones on one layer where both exist (settings ``finite_difference_check``).

Cost model (F forward, B backward, D_i one double backward from the loss down to layer i,
which costs about 2-3x (F + B) of the part of the network after layer i):
- per batch, once: F + B with create_graph (graphs are kept in memory up to
  ``max_cached_samples`` samples, about 3 MB per CIFAR sample for ResNet20; beyond, every round
  rebuilds them, F + B per batch per round, shared by all layers of the round);
- per layer: 2 x sketch + power iterations + trace probes (+ activation probes, at most
  ``act_max_probes``) products, each one D_i per batch; a naive loop pays F + B + D_i per product.
Layers run in lockstep (one round = the next product of every unfinished layer), so rebuilt
graphs are shared, and each layer stops on its own tolerances.

Measured on ResNet20 (one batch of 256, folded, CPU; benchmarks/bench_sensitivity.py):
- one probe over ALL layers at once (cross terms vanish in expectation) is NOT used: the cross
  terms dominate its variance, 2-25x the per-probe standard deviation of a per-layer probe
  (layer3.2.conv2: 8.9 vs 0.35 of the trace), far more than the per-layer products cost;
- ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over probes) is 1.0-1.4x SLOWER per
  vector than separate products on CPU, so products are formed one by one;
- plain Hutchinson needs ~(0.3-0.5 / trace_tol)^2 probes per layer (0.3-0.5 relative standard
  deviation per probe); after a 16-vector Hutch++ sketch the residual's is 0.01-0.06, and the
  power iteration from the sketch's Ritz vector converges in 2-4 products instead of 6-24.

Stopping (issue 24). What the allocation needs is not 1 % traces but a plan that no longer
changes. Under decision stopping (the API's and CLI's default) every layer first takes a few
plain Hutchinson probes (2 where its choice is fixed: pinned ends), then a decision rule
(:class:`hawq_onnx.allocation.settling.PlanSettling`: each estimate moved across its
Bonferroni-corrected Student-t interval, the exact plans re-solved) names the layers whose
precision could still change the plan at the requested budgets; only those get more probes,
and one that needs more than twice the sketch's size gets a Hutch++ sketch and deflated probes from then on
(:mod:`hawq_onnx.sensitivity.decision`). The eigenvalue is skipped unless asked for, and input
traces are measured only where activation bits are a choice (2 probes, their sign being all
that matters, unless a BOPs limit trades them). Precision stopping (``settle=None``) is the
fixed-precision mode described above. Measured on ResNet20: BENCHMARKS.md, session 13.

Seeds: every layer draws from its own ``torch.Generator`` seeded from ``seed`` and the layer
name, so a layer's result does not depend on which other layers are analysed or on the device.

The estimators are in :mod:`hawq_onnx.sensitivity.estimators`, the product engine in
:mod:`hawq_onnx.sensitivity.products`; this module runs them layer by layer and fills the report.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq_onnx.core import model_inputs
from hawq_onnx.core.layers import describe_layers, quantizable_modules
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity
from hawq_onnx.sensitivity.decision import DecisionRule, settle_results, sketch_after
from hawq_onnx.sensitivity.estimators import Eigen, LayerState, Trace, layer_program
from hawq_onnx.sensitivity.perturbations import InputStats, input_perturbation, weight_perturbations
from hawq_onnx.sensitivity.products import Batch, LossFn, _Products

if TYPE_CHECKING:
    from hawq_onnx.sources.model import LoadedModel
    from hawq_onnx.sources.splits import Dataset

log = logging.getLogger(__name__)

NO_LAYER = "the model has no quantizable layer (Conv1d, Conv2d or Linear): nothing to analyse"
DEFAULTS: dict[str, Any] = {"eig_tol": 1e-3, "max_iter": 100, "trace_tol": 1e-2, "min_probes": 8, "max_probes": 200,
                            "sketch": 16, "act_tol": 0.1, "act_max_probes": 32, "first_probes": 4}


# --- public API -------------------------------------------------------------------------------

def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"{{device}} {device}: CUDA is not available (torch {torch.__version__}); use {{device}} cpu", "device")
    if dev.type not in ("cpu", "cuda"):
        raise HawqError(f"device {device} is not supported: use cpu or cuda")
    return dev


def _check_settings(eig_tol: float, max_iter: int, trace_tol: float, act_tol: float, min_probes: int,
                    max_probes: int, sketch: int, act_max_probes: int, first_probes: int = DEFAULTS["first_probes"]) -> None:
    for label, value in (("eigenvalue tolerance", eig_tol), ("trace tolerance", trace_tol),
                         ("activation trace tolerance", act_tol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise HawqError(f"{label} must be a positive number, got {value}")
    if max_iter < 1:
        raise HawqError(f"max iterations must be at least 1, got {max_iter}")
    if min_probes < 2:
        raise HawqError(f"min probes must be at least 2 (a standard error needs two), got {min_probes}")
    if max_probes < min_probes:
        raise HawqError(f"max probes ({max_probes}) must be at least min probes ({min_probes})")
    if first_probes < 2:
        raise HawqError(f"first probes must be at least 2 (a standard error needs two), got {first_probes}")
    if sketch < 0 or act_max_probes < 0:
        raise HawqError(f"sketch size and activation probes must be 0 or more, got {sketch} and {act_max_probes}")


def check_settings(batches: int = 1, batch_size: int = 1, **settings: Any) -> None:
    """The analysis set's size and ``analyze``'s tolerances and limits (any of DEFAULTS' names;
    the rest at their defaults)."""
    if batches < 1 or batch_size < 1:
        raise OptionError(f"{{batches}} and {{batch_size}} must be positive (got {batches} and {batch_size})", "batches",
                          "batch_size")
    _check_settings(**{**DEFAULTS, **settings})


def _layer_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


def analyze(model: nn.Module, batches: Sequence[Batch], *, layers: Sequence[str] | None = None,
            loss_fn: LossFn | None = None, eig_tol: float = DEFAULTS["eig_tol"], max_iter: int = DEFAULTS["max_iter"],
            trace_tol: float = DEFAULTS["trace_tol"], act_tol: float = DEFAULTS["act_tol"],
            min_probes: int = DEFAULTS["min_probes"], max_probes: int = DEFAULTS["max_probes"],
            sketch: int = DEFAULTS["sketch"], act_max_probes: int = DEFAULTS["act_max_probes"],
            first_probes: int = DEFAULTS["first_probes"], eigenvalues: bool = True,
            settle: DecisionRule | None = None, activations: bool = True, seed: int = 0,
            device: str | torch.device = "cpu", max_cached_samples: int = 1024, progress: bool = False,
            notes: dict[str, Any] | None = None) -> list[LayerSensitivity]:
    """Hessian sensitivity of every quantizable layer (or of ``layers``), in network order.

    ``batches``: (x, y) pairs; ``loss_fn(output, y)`` must average over the batch (default
    cross-entropy). The model is analysed in eval mode on ``device``; its parameters are not
    changed (a copy is moved when it lives on another device). The input-activation terms are
    cheap but capped at ``act_max_probes`` (their standard error is reported, not converged
    on); ``activations=False`` skips them and leaves the layers without an activation term.
    ``eigenvalues=False`` skips the power iteration (``top_eigenvalue`` None).

    Stopping. Without ``settle`` every trace is refined to ``trace_tol`` (the input traces to
    ``act_tol``), after a Hutch++ sketch of ``sketch`` vectors. With a
    :class:`~hawq_onnx.sensitivity.decision.DecisionRule`, every estimate takes ``first_probes``
    plain probes, and then only those the rule names get more (a weight trace that needs many
    gets the sketch then), until the decision is settled or they reach ``max_probes`` /
    ``act_max_probes``; the input traces are measured only where the rule weighs them. ``notes``, when given, receives what the
    report's settings say of the products and of the stopping."""
    from hawq_onnx.core.progress import progress_bar

    _check_settings(eig_tol, max_iter, trace_tol, act_tol, min_probes, max_probes, sketch, act_max_probes,
                    first_probes)
    dev = _resolve_device(device)
    batches = list(batches)
    if not batches or any(len(y) == 0 for _, y in batches):
        raise HawqError("the sensitivity analysis needs at least one non-empty batch")
    loss_fn = loss_fn or F.cross_entropy
    if not quantizable_modules(model):
        raise HawqError(NO_LAYER)
    if next(model.parameters()).device != dev:
        model = copy.deepcopy(model).to(dev)
    all_modules = dict(quantizable_modules(model))
    names = list(all_modules) if layers is None else list(layers)
    unknown = [n for n in names if n not in all_modules]
    if unknown:
        raise HawqError(f"unknown layer(s) {', '.join(unknown)}; quantizable layers: {', '.join(all_modules)}")
    if not names:
        raise HawqError("no layer to analyse")
    modules = {n: all_modules[n] for n in names}
    if settle is not None:
        eigenvalues = eigenvalues or settle.needs_eigenvalues
        activations = activations and settle.weighs_activations

    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:  # second derivatives are taken w.r.t. layer outputs: no weight gradients needed
        p.requires_grad_(False)
    try:
        info = {li.name: li for li in describe_layers(model, model_inputs.shape_of(batches[0][0]))}
        inputs = input_perturbation(model, modules, batches, dev)
        perturbations = {n: weight_perturbations(modules[n].weight) for n in names}
        seconds = {n: 0.0 for n in names}

        def record(n: str, eigen: Eigen | None, trace: Trace, act: Trace) -> LayerSensitivity:
            return _record(info[n], eigen, trace, act, inputs[n] if activations else None, perturbations[n],
                           seconds[n])

        fixed: set[str] = set()
        if settle is not None:  # the question must be answerable before any product is spent
            fixed = settle.start([record(n, None, Trace(0.0, 0.0, 0, False), Trace(0.0, 0.0, 0, False))
                                  for n in names])
        shared = [n for n in names if inputs[n].calls > 1]
        for n in shared:
            modules[n].weight.requires_grad_(True)
        samples = sum(len(y) for _, y in batches)
        products = _Products(model, modules, batches, loss_fn, dev, cache=samples <= max_cached_samples, shared=shared)
        gens = {n: torch.Generator().manual_seed(_layer_seed(seed, n)) for n in names}

        def stops(n: str) -> dict[str, Any]:
            if settle is None:
                act = act_max_probes
                out = dict(trace_tol=trace_tol, min_probes=min_probes, max_probes=max_probes, act_tol=act_tol,
                           act_min_probes=min_probes)
            else:  # a fixed count; a layer whose choice is fixed takes the fewest that give an error,
                # and so do input traces that only their sign can make count (no BOPs limit)
                first = min(2 if n in fixed else first_probes, max_probes)
                act = min(first if settle.trades_activations else 2, act_max_probes)
                out = dict(trace_tol=0.0, min_probes=first, max_probes=first, act_tol=0.0, act_min_probes=act)
            return {**out, "act_max_probes": act if activations and inputs[n].elements else 0}

        programs = {n: layer_program(modules[n].weight.numel(), modules[n].weight.detach().flatten(), gens[n],
                                     sketch=0 if settle is not None else sketch, eigenvalues=eigenvalues,
                                     eig_tol=eig_tol, max_iter=max_iter, **stops(n))
                    for n in names}
        pending = {n: next(programs[n]) for n in names}
        results: dict[str, tuple[Eigen | None, Trace, Trace, LayerState]] = {}
        with progress_bar(total=len(names), unit="layer", desc="hessian", enabled=progress) as bar:
            count = 0
            while pending:
                replies = products.round(pending, gens, seconds)
                count += len(pending)
                for n, reply in replies.items():
                    try:
                        pending[n] = programs[n].send(reply)
                    except StopIteration as stop:
                        results[n] = stop.value
                        del pending[n]
                        if settle is None:
                            bar.update(1)
                bar.set_postfix(products=count)  # rounds take seconds: show that work goes on
            results = {n: results[n] for n in names}  # network order: the rule reads layers by position
            if settle is not None:
                left, checks = settle_results(settle, results, record, products, gens, seconds, bar, count,
                                       max_probes=max_probes, act_max_probes=act_max_probes if activations else 0,
                                       sketch=sketch)
        methods = {n: products.product(n) for n in names}
        if notes is not None:
            notes.update(_product_notes(methods, products, seed))
            if settle is not None:
                notes.update(_stopping_notes(settle, left, checks,
                                             [n for n in names if results[n][3].weight.sketched]))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)

    out = []
    for n in names:
        eigen, trace, act, _ = results[n]
        layer = dataclasses.replace(record(n, eigen, trace, act), hessian_product=methods[n])
        out.append(layer)
        log.info("%s: eigenvalue %s, trace %.4g +- %.2g (%d probes)", n,
                 "not computed" if eigen is None else f"{eigen.value:.4g} ({eigen.iterations} it)", trace.value,
                 trace.std_error, trace.probes)
    return out


def _record(li, eigen: Eigen | None, trace: Trace, act: Trace, inputs: InputStats | None,
            perturbation: dict[str, dict[str, float]], seconds: float) -> LayerSensitivity:
    if eigen is not None:
        status = "zero" if eigen.zero else "indefinite" if eigen.value < 0 else "ok"
    else:
        status = "zero" if trace.value == 0 and trace.std_error == 0 else "ok"
    return LayerSensitivity(
        name=li.name, kind=li.kind, params=li.params, out_channels=li.out_channels, macs=li.macs,
        top_eigenvalue=None if eigen is None else eigen.value, eigen_iterations=0 if eigen is None else eigen.iterations,
        eigen_converged=eigen is not None and eigen.converged,
        trace=trace.value, trace_std_error=_finite(trace.std_error), trace_probes=trace.probes,
        trace_converged=trace.converged, seconds=seconds, perturbation=perturbation,
        act_elements=inputs.elements if inputs else 0, act_trace=act.value,
        act_trace_std_error=_finite(act.std_error), act_trace_probes=act.probes,
        act_perturbation=inputs.perturbation if inputs else {}, status=status)


def _stopping_notes(rule: DecisionRule, left: dict[str, str], checks: int, sketched: list[str]) -> dict[str, Any]:
    return {"stopping": "decision", "settled_for": rule.describe(), "settled": not left,
            "unsettled": {n: part for n, part in left.items()}, "settling_checks": checks, "sketched": sketched}


def _product_notes(methods: dict[str, str], products: _Products, seed: int) -> dict[str, Any]:
    if all(m == "exact" for m in methods.values()):
        return {}  # the settings of an all-exact analysis stay as they always were
    notes: dict[str, Any] = {"hessian_products": "exact double backward; where an op has none, analysis "
                             "stand-ins with the same values and derivative, else central finite differences "
                             "of gradients (per layer: hessian_product)"}
    if products.fallback:
        notes["finite_difference_check"] = products.check_finite_differences(seed)
    return notes


def _finite(x: float) -> float:
    # A standard error is infinite only when max_probes < 2 samples were drawn; JSON wants finite.
    return x if math.isfinite(x) else float(np.finfo(np.float64).max)


def analyze_model(loaded: LoadedModel, dataset: Dataset, *, batches: int = 1, batch_size: int = 256, seed: int = 0,
                  device: str = "cpu", progress: bool = False, **options: Any) -> Sensitivity:
    """Fold BN (on a copy), analyse on ``batches`` deterministic shuffled training batches, and
    fill the sensitivity report. ``options`` go to :func:`analyze`."""
    check_settings(batches=batches, batch_size=batch_size)
    _resolve_device(device)  # fail before the work
    from hawq_onnx.sources.user_data import loss_name

    data = list(dataset.train.batches(batch_size, shuffle=True, seed=seed, limit=batches))
    loss = loss_name(options.get("loss_fn"), dataset.labels_given)
    return analyze_batches(loaded, data, dataset.name, batch_size=batch_size, seed=seed, device=device,
                           progress=progress, loss=loss, **options)


def analyze_batches(loaded: LoadedModel, data: Sequence[Batch], data_name: str, *, batch_size: int | None = None,
                    seed: int = 0, device: str = "cpu", progress: bool = False, loss: str = "cross_entropy",
                    **options: Any) -> Sensitivity:
    """Fold BN (on a copy), analyse on the (inputs, labels) ``data`` batches, and fill the
    sensitivity report. ``loss`` names the loss for the report; ``options`` go to :func:`analyze`."""
    from hawq_onnx.core.bn_fold import fold_batchnorm
    from hawq_onnx.sources.model import model_fingerprint

    _resolve_device(device)  # fail before the work
    describe_layers(loaded.module, loaded.spec.input_shape)  # no quantizable layer: a clear error, now
    if not quantizable_modules(loaded.module):
        raise HawqError(NO_LAYER)
    start = time.perf_counter()
    model = copy.deepcopy(loaded.module)
    fold_batchnorm(model, loaded.spec.input_shape)
    notes: dict[str, Any] = {}
    layers = analyze(model, data, seed=seed, device=device, progress=progress, notes=notes, **options)
    settle = options.get("settle")
    shown = {k: options.get(k, v) for k, v in DEFAULTS.items()}
    if settle is None:
        shown.pop("first_probes")
    settings = {
        "split": "train", "batches": len(data),
        "batch_size": batch_size if batch_size is not None else max(len(y) for _, y in data),
        "samples": sum(len(y) for _, y in data),
        "seed": seed, "device": str(device), "loss": loss, "bn_folded": True, **shown,
    }
    sketched = settings["sketch"] > 0
    computed = any(layer.top_eigenvalue is not None for layer in layers)
    start_vector = "a random start" if settle is not None or not sketched else "the top Ritz vector of the Hutch++ sketch"
    settings["eigen_method"] = f"power iteration from {start_vector}" if computed else "not computed"
    if settle is None:
        settings["trace_method"] = ("Hutch++: Hutchinson (Rademacher) deflated by the sketch" if sketched
                                    else "Hutchinson (Rademacher)") + ", stopped on the standard error"
    else:
        settings["trace_method"] = ("Hutchinson (Rademacher)" + (
            f"; a layer still unsettled after {sketch_after(settings['sketch'])} probes gets a Hutch++ sketch "
            "and deflated probes from then on" if sketched else "") + "; stopped when the plan is settled")
    settings.update(notes)
    return Sensitivity(model=loaded.reference, fingerprint=model_fingerprint(model), data=data_name,
                       settings=settings, layers=layers, seconds=time.perf_counter() - start,
                       float_weight_bytes=4 * sum(layer.params for layer in layers))
