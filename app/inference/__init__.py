"""The pure core: decode, preprocess, the model and the batching engine (no HTTP)."""
