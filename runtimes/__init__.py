"""The runtime: load a bundle and run it, with no torch, transformers or onnx imported."""
