"""Domain-adaptive fine-tuning of the demo model: what `edgemfm finetune` reaches on held-out questions."""
