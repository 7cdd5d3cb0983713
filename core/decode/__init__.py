"""Decoding: strategies and filters, the batched comparator, the beam tree, the KV cache measured."""
