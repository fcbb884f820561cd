"""Stage 5: ONNX Runtime accuracy, latency, size and kernels of float and quantized files; reports."""
