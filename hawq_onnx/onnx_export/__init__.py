"""Stage 4: float ONNX, and the QDQ model the plan describes (the passes in hawq_onnx.passes)."""
