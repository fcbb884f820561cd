"""Stage 1: per-layer Hessian sensitivity (top eigenvalue, trace) of a BN-folded model."""
