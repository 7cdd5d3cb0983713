"""Training: the lab's small GPT, data, pre-training on accelerate with checkpoints, fine-tuning (full, frozen, LoRA)."""
