"""The embedding space a process serves, as one value: `ModelInfo.fingerprint`.

Two processes give the same vector for the same input when, and only when, they agree on everything
that goes into it: the weights as loaded (their bytes, not the checkpoint's path or tag), the
precision and the kind of device they run in, the model's preprocessing and tokenizer, and how
images are decoded and preprocessed (FAST_DECODE, IMAGE_PREPROCESS, JPEG_DECODE). The fingerprint is the SHA-256 of those, so two processes share
cached vectors (the shared cache's tag, app.state.cache) only when their fingerprints are equal.
Not in it: implementations checked to give the same vectors to 1e-4 (the CPU's packed linear
layers, torch.compile), and what differs between two GPUs of one kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import torch

# Bump when the decoding or preprocessing code changes a vector, so that pods of two releases, on one
# Redis during a rolling update, do not share vectors.
PIPELINE_VERSION = 1
# Tensors are hashed on a few threads (hashlib releases the GIL on large buffers).
_HASH_THREADS = 8


def weights_sha256(model: torch.nn.Module) -> str:
    """Return the SHA-256 of a model's weights as loaded: every tensor's name, dtype, shape and bytes, in order."""
    items = list(model.state_dict().items())
    with ThreadPoolExecutor(min(_HASH_THREADS, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_tensor_digest, items))
    whole = hashlib.sha256()
    for digest in digests:
        whole.update(digest)
    return whole.hexdigest()


def _tensor_digest(item: tuple[str, torch.Tensor]) -> bytes:
    name, tensor = item
    # One tensor copied off the accelerator at a time; raw bytes whatever the dtype (numpy has no bfloat16).
    flat = tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8)
    digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(flat.numpy().data)
    return digest.digest()


def embedding_fingerprint(
    *,
    model: str,
    weights: str,
    dtype: str,
    device: str,
    preprocess: str,
    context_length: int,
    fast_decode: bool,
    image_path: str = "pil/pool",
) -> str:
    """Return the fingerprint (64 hex digits) of the embedding space these settings and weights give."""
    parts = {
        "pipeline": PIPELINE_VERSION,
        "model": model,
        "weights_sha256": weights,
        "dtype": dtype,
        # The kind of device, not its number: cuda:0 and cuda:1 of one machine give the same vectors.
        "device": torch.device(device).type,
        "preprocess": preprocess,
        "context_length": context_length,
        "fast_decode": fast_decode,
        # IMAGE_PREPROCESS and JPEG_DECODE: the tensor path and the engine's decoder move vectors slightly.
        "image_path": image_path,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
