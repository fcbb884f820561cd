"""Finite-difference Hessian products against exact ones on the digits CNN (one batch of 256,
seed 0): per-layer relative error of H v and of input-activation samples, then the whole
default analysis with every layer forced onto finite differences. Results are quoted in
hawq_onnx/sensitivity/finite_differences.py. Run: python benchmarks/bench_finite_differences.py
"""
import copy, json, time
import torch
torch.set_num_threads(1)
from hawq_onnx.api import prepare_model, prepare_data
from hawq_onnx.core.bn_fold import fold_batchnorm
from hawq_onnx.core.layers import quantizable_modules
from hawq_onnx.sensitivity import finite_differences as fd, hessian
from hawq_onnx.sensitivity.products import _Products
from hawq_onnx.sensitivity.estimators import rademacher
import torch.nn.functional as F

loaded = prepare_model(None)
data = prepare_data(loaded, None)
model = copy.deepcopy(loaded.module); fold_batchnorm(model, loaded.spec.input_shape); model.eval()
for p in model.parameters(): p.requires_grad_(False)
batches = list(data.train.batches(256, shuffle=True, seed=0, limit=1))
mods = dict(quantizable_modules(model))
prods = _Products(model, mods, batches, F.cross_entropy, torch.device("cpu"), cache=True, shared=[])
graph = prods.cache[0]
out = {"hv": {}, "act": {}}
x, y = batches[0]
forward = fd.batch_forward(model, x, y, F.cross_entropy)
for name, m in mods.items():
    w = m.weight.detach()
    errs = []
    for k in range(4):
        v = rademacher(w.numel(), torch.Generator().manual_seed(k), w).view_as(w)
        hv = graph.weight_hvp(name, prods.f[name], w, v)
        hf = prods._finite_difference(name, v, torch.Generator(), 0).view_as(w)
        errs.append(float((hf - hv).norm() / hv.norm()))
    out["hv"][name] = errs
    a = [graph.input_quadratic(name, prods.f[name], w, torch.Generator().manual_seed(k)) for k in range(4)]
    from hawq_onnx.sensitivity.estimators import INPUT_PROBE
    b = [prods._finite_difference(name, INPUT_PROBE, torch.Generator().manual_seed(k), 0) for k in range(4)]
    out["act"][name] = [abs(p - q) / abs(p) for p, q in zip(a, b)]
print(json.dumps(out, indent=1), flush=True)
t = time.perf_counter(); exact = hessian.analyze(model, batches, seed=0); te = time.perf_counter() - t
orig = fd.silent_layers
fd.silent_layers = lambda first_order: set(first_order)   # every layer takes the fallback
t = time.perf_counter(); approx = hessian.analyze(model, batches, seed=0); ta = time.perf_counter() - t
fd.silent_layers = orig
for e, a in zip(exact, approx):
    print(f"{e.name:12s} eig {e.top_eigenvalue:.5g} fd {a.top_eigenvalue:.5g} rel {abs(a.top_eigenvalue-e.top_eigenvalue)/abs(e.top_eigenvalue):.2e} | "
          f"trace {e.trace:.5g} +- {e.trace_std_error:.2g} fd {a.trace:.5g} rel {abs(a.trace-e.trace)/abs(e.trace):.2e} | "
          f"act {e.act_trace:.4g} fd {a.act_trace:.4g} rel {abs(a.act_trace-e.act_trace)/abs(e.act_trace):.2e} | {a.hessian_product}")
print(f"exact {te:.1f} s, finite differences {ta:.1f} s")
