"""Models: loading (ModelSpec -> LoadedModel), one forward pass with hooks (capture), parameter accounting."""
