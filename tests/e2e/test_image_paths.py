"""The image paths beside open_clip's own transform: their vectors against open_clip's, and what fails alone.

IMAGE_PREPROCESS=pil-uint8 gives the very vectors of the default path; IMAGE_PREPROCESS=tensor and
JPEG_DECODE=engine (torchcodec's libjpeg-turbo here, nvJPEG on a GPU: bench/gpu_check.sh measures that one)
give vectors within a cosine of 0.9995 of open_clip's PIL transform + forward, on generated photos.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from app.errors import ImageTooLarge, InvalidImage
from app.inference.decode import decode_image
from app.inference.image_tower import ImageOptions, ImagePathError, ImageTower
from app.inference.jpeg_batch import JpegBatchDecoder
from app.inference.jpeg_route import engine_jpeg
from app.inference.model import CONFIG_DIR, ClipEmbedder, ModelLoadError
from app.inference.payload import DecodedImage, EncodedImage
from app.inference.preprocess import Preprocess
from tests.support.api import call
from tests.support.data import png_rgba_bytes, tiny_settings
from tests.support.imageserver import ImageServer
from tests.support.photos import corrupt_scan, photo_jpeg
from tests.support.service import run_service

MAX_PIXELS = 40_000_000
# Photo sizes: 1 MP landscape, portrait, odd, tiny (upsampled), exactly the input size.
SIZES = [(1280, 960), (480, 640), (333, 500), (64, 48), (224, 224)]
PARITY = 0.9995


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [photo_jpeg(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module", params=["ViT-B-32", "clip-tiny"])
def weights(request, checkpoint) -> tuple[str, str]:
    """A model name and a checkpoint file of seeded weights for it."""
    if request.param == "clip-tiny":
        return "clip-tiny", checkpoint
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(7)
    path = request.getfixturevalue("tmp_path_factory").mktemp("vitb32") / "vit-b-32.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), path)
    return "ViT-B-32", str(path)


@pytest.fixture(scope="module")
def reference(weights, photos) -> np.ndarray:
    """open_clip's own vectors: its PIL transform, its forward pass."""
    name, path = weights
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=path)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(d))) for d in photos])
        return torch.nn.functional.normalize(model.eval().encode_image(pixels), dim=-1).numpy()


def _embedder(weights, **options: object) -> ClipEmbedder:
    name, path = weights
    return ClipEmbedder(name, path, "cpu", images=ImageOptions(fast_decode=False, **options))  # type: ignore[arg-type]


def _pool_vectors(embedder: ClipEmbedder, photos: list[bytes]) -> np.ndarray:
    """Decode on the decode threads' decoder, then what the embedder's IMAGE_PREPROCESS makes of it."""
    return np.stack(
        embedder.encode_images([embedder.preprocess(decode_image(d, max_pixels=MAX_PIXELS)) for d in photos])
    )


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.sum(vectors * reference, axis=1)


def test_pil_path_matches_open_clip(weights, photos, reference):
    np.testing.assert_allclose(_pool_vectors(_embedder(weights), photos), reference, atol=1e-5)


def test_pil_uint8_path_is_bit_identical_to_the_pil_path(weights, photos):
    plain = _pool_vectors(_embedder(weights), photos)
    uint8 = _pool_vectors(_embedder(weights, preprocess="pil-uint8"), photos)
    assert np.array_equal(uint8, plain)


def test_started_batches_give_the_very_vectors_of_todays_path(weights, photos):
    embedder = _embedder(weights)  # ENGINE_OVERLAP runs the defaults' float32 batches through start_images
    payloads = [embedder.preprocess(decode_image(d, max_pixels=MAX_PIXELS)) for d in photos]
    assert np.array_equal(embedder.start_images(payloads).wait(), embedder.encode_images(payloads))


def test_tensor_path_matches_open_clip_within_parity(weights, photos, reference):
    cosines = _cosines(_pool_vectors(_embedder(weights, preprocess="tensor"), photos), reference)
    assert cosines.min() >= PARITY, cosines


def test_engine_jpeg_decode_matches_open_clip_within_parity(weights, photos, reference):
    pytest.importorskip("torchcodec")
    embedder = _embedder(weights, preprocess="tensor", jpeg_decode="engine")
    payloads = [engine_jpeg(d, max_pixels=MAX_PIXELS) for d in photos]
    assert all(isinstance(p, EncodedImage) for p in payloads)
    cosines = _cosines(np.stack(embedder.encode_images(payloads)), reference)
    assert cosines.min() >= PARITY, cosines


@pytest.mark.parametrize("orientation", range(1, 9))
def test_engine_jpeg_decode_orients_as_the_decode_threads_do(checkpoint, orientation):
    pytest.importorskip("torchcodec")
    embedder = _embedder(("clip-tiny", checkpoint), preprocess="tensor", jpeg_decode="engine")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(96, 60, seed=orientation))).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    data = buf.getvalue()
    encoded = engine_jpeg(data, max_pixels=MAX_PIXELS)
    assert encoded is not None and encoded.header.orientation == orientation
    pool = DecodedImage(np.asarray(decode_image(data, max_pixels=MAX_PIXELS)))
    assert torch.equal(embedder.image_inputs([encoded]), embedder.image_inputs([pool]))


def test_engine_jpeg_decode_fails_a_corrupt_image_alone(checkpoint, photos):
    pytest.importorskip("torchcodec")
    embedder = _embedder(("clip-tiny", checkpoint), preprocess="tensor", jpeg_decode="engine")
    corrupt = engine_jpeg(corrupt_scan(photos[1]), max_pixels=MAX_PIXELS)
    assert corrupt is not None  # the header checks pass: only the decoder can tell
    good = [engine_jpeg(d, max_pixels=MAX_PIXELS) for d in photos]
    outcomes = embedder.encode_images([good[0], corrupt, *good[1:]])
    assert isinstance(outcomes[1], InvalidImage) and "truncated or corrupt" in outcomes[1].message
    alone = [embedder.encode_images([g])[0] for g in good]
    np.testing.assert_allclose(np.stack([outcomes[0], *outcomes[2:]]), np.stack(alone), atol=1e-6)


def test_engine_jpeg_decode_gives_a_refused_image_to_the_decode_threads_decoder(checkpoint, photos):
    torchcodec = pytest.importorskip("torchcodec.decoders")
    refused = photos[2]
    calls: list[int] = []

    def decode_refusing_one(datas: list[bytes], **options: object) -> list[torch.Tensor]:
        # nvJPEG refuses some streams that libjpeg decodes; here libjpeg decodes, so one refusal is played.
        calls.append(len(datas))
        if refused in datas:
            raise RuntimeError("nvjpegDecodeBatched failed: 6")
        return torchcodec.decode_jpeg(datas, **options)

    embedder = _embedder(("clip-tiny", checkpoint), preprocess="tensor", jpeg_decode="engine")
    embedder._images._batcher._decoder = JpegBatchDecoder(torch.device("cpu"), decode_refusing_one)
    outcomes = embedder.encode_images([engine_jpeg(d, max_pixels=MAX_PIXELS) for d in photos])
    assert calls == [5, 2, 3, 1, 2]  # halves until the refused image stands alone
    pool = _embedder(("clip-tiny", checkpoint), preprocess="tensor")
    np.testing.assert_allclose(np.stack(outcomes), _pool_vectors(pool, photos), atol=1e-6)


def test_image_tower_refuses_the_tensor_path_for_a_transform_without_one(checkpoint):
    embedder = ClipEmbedder("clip-tiny", checkpoint, "cpu")
    transform = open_clip.image_transform(64, is_train=False, resize_mode="longest")  # it pads: no tensor path
    with pytest.raises(ImagePathError, match="no tensor path"):
        ImageTower(
            ImageOptions(preprocess="tensor"),
            Preprocess(transform),
            embedder.model.encode_image,
            embedder.device,
            torch.float32,
            embedder.padded_size,
            64,
        )


def test_engine_jpeg_decode_without_torchcodec_refuses_to_load(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # what an install without it gives
    with pytest.raises(ModelLoadError, match="JPEG_DECODE=engine needs torchcodec"):
        _embedder(("clip-tiny", checkpoint), preprocess="tensor", jpeg_decode="engine")


@pytest.fixture(scope="module")
def engine_service(checkpoint):
    pytest.importorskip("torchcodec")
    settings = tiny_settings(
        clip_pretrained=checkpoint,
        fast_decode=False,
        image_preprocess="tensor",
        jpeg_decode="engine",
        engine_overlap=True,
        max_image_pixels=2_000_000,
        max_batch_size=16,
    )
    with run_service(settings) as service:
        yield service


def test_service_with_engine_decode_answers_each_image_as_its_own(engine_service, checkpoint, photos):
    with ImageServer() as images:
        images.files |= {f"p{i}.jpg": d for i, d in enumerate(photos)}
        images.files["rgba.png"] = png_rgba_bytes()
        images.files["corrupt.jpg"] = corrupt_scan(photos[0])
        images.files["truncated.jpg"] = photos[0][:2000]
        images.files["huge.jpg"] = photo_jpeg(1800, 1200, seed=9)  # 2.16 MP, over MAX_IMAGE_PIXELS
        names = ["p0.jpg", "corrupt.jpg", "p1.jpg", "rgba.png", "truncated.jpg", "huge.jpg", "p3.jpg"]
        status, body, _ = call(
            engine_service.base, "/v1/embed/image-batch", {"image_urls": [images.url(f"img/{n}") for n in names]}
        )
    assert status == 200
    codes = [r["error"]["code"] if r["error"] else None for r in body["results"]]
    assert codes == [None, "invalid_image", None, None, "invalid_image", "image_too_large", None]
    model, _, preprocess = open_clip.create_model_and_transforms("clip-tiny", pretrained=checkpoint)
    for name, result in zip(names, body["results"], strict=True):
        if result["error"] or not name.endswith(".jpg"):
            continue  # open_clip's transform drops a PNG's alpha where the service composites it on white
        picture = Image.open(io.BytesIO(images.files[name]))
        with torch.inference_mode():
            want = torch.nn.functional.normalize(model.eval().encode_image(preprocess(picture)[None]), dim=-1)[0]
        assert float(np.dot(result["embedding"], want.numpy())) >= PARITY, name


def test_settings_refuse_engine_jpeg_decode_without_the_tensor_path():
    with pytest.raises(ValueError, match="JPEG_DECODE=engine needs IMAGE_PREPROCESS=tensor"):
        tiny_settings(jpeg_decode="engine")


def test_engine_jpeg_route_refuses_what_the_pool_refuses():
    with pytest.raises(ImageTooLarge):
        engine_jpeg(photo_jpeg(300, 200), max_pixels=50_000)
