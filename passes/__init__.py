"""ONNX-to-ONNX passes of hawq-onnx (installed as ``hawq_onnx.passes``), built on onnx_ir."""
