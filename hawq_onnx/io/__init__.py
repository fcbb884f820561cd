"""Atomic writes, and the artefacts' formats: sensitivity.json, plan.json, quantized.pt."""
