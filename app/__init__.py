"""CLIP embedding service: images (by URL) and texts in, L2-normalised embeddings out."""
