"""The integer grid, layer discovery, BatchNorm folding, the ONNX Runtime session factory and ONNX graph inspection: what every stage builds on."""
