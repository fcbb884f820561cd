"""Stage 6: .ort bundles with their operator config and manifest."""
