"""Structural pruning of the demo model and SmolLM2: what each cut costs in accuracy and buys in size and speed."""
