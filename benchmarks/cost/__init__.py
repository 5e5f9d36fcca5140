"""The cost model: its measured figures and how well it predicts measured latency."""
