"""Inspecting a loaded model: architecture and diagram, the forward pass by hand, tokens, attention, weights, lens."""
