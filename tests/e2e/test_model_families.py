"""Each family's vectors equal open_clip's own (create_model_and_transforms + get_tokenizer + forward) to 1e-4:
CLIP, SigLIP, SigLIP2 and MobileCLIP, tiny random-weight models built here as `local-dir:` folders, their
tokenizers trained here (tests/support/families.py). Their preprocessing (squash or shortest side + crop,
mean/std, interpolation) and their padding (SigLIP: exactly 64 tokens) come from their own configs, on the
exact image path and on the fast ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.inference.decode import decode_image
from app.inference.loading import load_clip
from app.inference.model import ClipEmbedder
from app.inference.spec import ModelSpec
from tests.support.data import jpeg_bytes
from tests.support.families import FAMILIES, build_family, family_config
from tests.support.served import Reference, models_settings

IMAGES = [jpeg_bytes(300, 200, 1), jpeg_bytes(120, 260, 2), jpeg_bytes(640, 480, 3)]
TEXTS = ["a photo of a cat", "Ünïcödé — 東京の写真", "!!", "a red car on the beach at night " * 12]
PREPROCESS = {
    "clip": ((64, 64), "shortest", "bicubic", (0.48145466, 0.4578275, 0.40821073)),
    "siglip": ((160, 160), "squash", "bicubic", (0.5, 0.5, 0.5)),
    "siglip2": ((160, 160), "squash", "bicubic", (0.5, 0.5, 0.5)),
    "mobileclip": ((64, 64), "shortest", "bilinear", (0.0, 0.0, 0.0)),
}
PAD_ID = {"siglip": 1, "siglip2": 0}  # T5's pads with its end token; Gemma's with <pad>


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_family(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def references(built: dict[str, str]) -> dict[str, Reference]:
    return {family: Reference.load(name) for family, name in built.items()}


def _load(name: str, **overrides: object) -> ClipEmbedder:
    embedder = load_clip(models_settings([{"model": name}], **overrides))
    assert isinstance(embedder, ClipEmbedder)
    return embedder


@pytest.fixture(scope="module")
def embedders(built: dict[str, str]) -> dict[str, ClipEmbedder]:
    return {family: _load(name) for family, name in built.items()}


def _service_images(embedder: ClipEmbedder, datas: list[bytes]) -> np.ndarray:
    pixels = [embedder.preprocess(decode_image(data, max_pixels=10**8)) for data in datas]
    return np.stack(embedder.encode_images(pixels))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_image_vectors_equal_open_clip(family, embedders, references):
    np.testing.assert_allclose(
        _service_images(embedders[family], IMAGES), references[family].images(IMAGES), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_family_text_vectors_and_tokens_equal_open_clip(family, embedders, references):
    embedder, reference = embedders[family], references[family]
    tokens = [embedder.tokenize(text) for text in TEXTS]
    np.testing.assert_array_equal(np.stack(tokens), reference.tokenizer(TEXTS).numpy())
    np.testing.assert_allclose(embedder.encode_texts(tokens), reference.texts(TEXTS), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_family_siglip_text_is_padded_to_exactly_64_with_its_pad_token(family, embedders, references):
    embedder = embedders[family]
    tokens = embedder.tokenize("a cat")
    inner = references[family].tokenizer.tokenizer
    unpadded = inner(["a cat"], truncation=True, max_length=64)["input_ids"][0]
    assert embedder.info.context_length == 64 and tokens.shape == (64,)
    assert tokens[: len(unpadded)].tolist() == unpadded
    assert set(tokens[len(unpadded) :].tolist()) == {PAD_ID[family]}
    # What /v1/embeddings counts: the tokens before the padding, whatever id pads.
    assert embedder.count_tokens("a cat") == len(unpadded)
    assert embedder.count_tokens("a red car on the beach " * 40) == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_family_preprocess_config_is_the_models_own(family, embedders):
    image = embedders[family].info.image
    assert image is not None
    size, resize_mode, interpolation, mean = PREPROCESS[family]
    assert (image.size, image.resize_mode, image.interpolation) == (size, resize_mode, interpolation)
    np.testing.assert_allclose(image.mean, mean, rtol=0, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", ["pil-uint8", "tensor"])
def test_family_fast_image_paths_follow_the_models_preprocessing(family, path, built, embedders, references):
    fast = _load(built[family], image_preprocess=path)
    assert fast.info.image_path == f"{'pil' if path == 'pil-uint8' else 'tensor'}/pool"
    got = _service_images(fast, IMAGES)
    if path == "pil-uint8":  # the same pixels as open_clip's transform, normalised on the engine
        np.testing.assert_allclose(got, _service_images(embedders[family], IMAGES), rtol=0, atol=1e-6)
    else:  # resized by tensor kernels: a rounding step per pixel at most
        cosines = np.sum(got * references[family].images(IMAGES), axis=1)
        assert cosines.min() >= 0.9995


def test_family_without_a_tensor_path_keeps_the_exact_one(tmp_path, references):
    # resize_mode=longest pads: the tensor path cannot do it, so this model alone takes Pillow's path.
    folder = tmp_path / "longest"
    name = build_family("clip", folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"resize_mode": "longest"}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    embedder = _load(name, image_preprocess="tensor")
    assert embedder.info.image_path == "pil/pool"
    np.testing.assert_allclose(
        _service_images(embedder, IMAGES), Reference.load(name).images(IMAGES), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("towers", ["text", "image"])
def test_family_one_tower_gives_that_towers_vectors_in_less_memory(towers, built, embedders):
    whole = embedders["siglip2"]
    spec = {"model": built["siglip2"], "towers": towers}
    one = load_clip(models_settings([spec]))
    assert (one.info.towers, one.info.modalities) == (towers, (towers,))
    assert one.info.memory_bytes < whole.info.memory_bytes
    assert one.info.fingerprint == whole.info.fingerprint  # one tower of the same space
    if towers == "text":
        np.testing.assert_allclose(
            one.encode_texts([one.tokenize(t) for t in TEXTS]), whole.encode_texts([whole.tokenize(t) for t in TEXTS])
        )
        with pytest.raises(RuntimeError, match="text tower only"):
            one.encode_images([one.preprocess(decode_image(IMAGES[0], max_pixels=10**8))])
    else:
        np.testing.assert_allclose(_service_images(one, IMAGES), _service_images(whole, IMAGES))  # type: ignore[arg-type]


def test_family_fingerprint_names_the_folders_contents_not_its_path(tmp_path, built, embedders):
    copy = tmp_path / "elsewhere"
    shutil.copytree(Path(built["siglip2"].removeprefix("local-dir:")), copy)
    assert _load(f"local-dir:{copy}").info.fingerprint == embedders["siglip2"].info.fingerprint
    # Another tokenizer is another space, the weights being the same.
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("<unk>", "<UNK>"))
    assert _load(f"local-dir:{copy}").info.fingerprint != embedders["siglip2"].info.fingerprint


def test_family_configs_are_what_open_clip_documents(tmp_path):
    # The SigLIP configs of open_clip itself set what the tiny ones keep (the tokenizer differs by design).
    import open_clip

    real = open_clip.get_model_config("ViT-B-16-SigLIP2")
    tiny = family_config("siglip2", tmp_path)["model_cfg"]
    assert isinstance(tiny, dict)
    keys = ("context_length", "no_causal_mask", "pool_type", "proj_bias", "act_kwargs")
    assert {k: real["text_cfg"][k] for k in keys} == {k: tiny["text_cfg"][k] for k in keys}
    assert real["vision_cfg"]["timm_pool"] == tiny["vision_cfg"]["timm_pool"] == "map"
    assert ModelSpec(model=f"local-dir:{tmp_path}").served_name == tmp_path.name
