"""Stage 3: fake quantization, calibration and quantization-aware fine-tuning in HAWQ order."""
