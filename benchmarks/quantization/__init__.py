"""Quantization: perplexity and accuracy of the presets and methods on real models, kernel and layer studies."""
