"""Evaluation: sliding-window perplexity, KL between models, multiple-choice scoring."""
