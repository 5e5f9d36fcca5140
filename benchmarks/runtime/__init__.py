"""The runtime: decode speed, speculative decoding, the cascade, pre-processing, .pte against ONNX."""
