"""The output types (docs/api.md#output-types), defined once on the server and undone by the client's helper,
and the signature's cover of the options a request sends."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from clip_client import signing
from clip_client.vectors import bits, raw, unpack

from app.errors import InvalidRequest
from app.inference.outputs import EMBEDDING_TYPES, OutputSpec, encode, to_base64

# A unit vector with each kind of component: the extremes, zero, and ones that round either way.
VECTOR = np.array([1.0, -1.0, 0.0, 0.5, -0.25, 0.004, -0.004, 0.1, 0.3, -0.7], dtype=np.float32)
UNIT = VECTOR / np.linalg.norm(VECTOR)


def test_outputs_types_are_the_clients():
    assert EMBEDDING_TYPES == signing.EMBEDDING_TYPES


@pytest.mark.parametrize(
    ("embedding_type", "expected"),
    [
        ("int8", [127, -127, 0, 64, -32, 1, -1, 13, 38, -89]),
        ("uint8", [255, 1, 128, 192, 96, 129, 127, 141, 166, 39]),
        # Sign bits, first component in the high bit, padded with 0: 1 0 0 1 0 1 0 1 | 1 0 000000
        ("ubinary", [0b10010101, 0b10000000]),
        ("binary", [0b10010101 - 128, 0b10000000 - 128]),
    ],
)
def test_outputs_integer_types_follow_the_documented_mapping(embedding_type, expected):
    # 127·v rounded half to even, for v = [1, -1, 0, .5, -.25, .004, -.004, .1, .3, -.7] (not renormalised here).
    assert encode(VECTOR, embedding_type).tolist() == expected


@pytest.mark.parametrize("embedding_type", EMBEDDING_TYPES)
def test_outputs_client_helper_undoes_each_type_from_json_and_base64(embedding_type):
    encoded = encode(UNIT, embedding_type)
    from_json = unpack(encoded.tolist(), embedding_type, dim=len(UNIT))
    from_b64 = unpack(to_base64(encoded, embedding_type), embedding_type, dim=len(UNIT))
    np.testing.assert_array_equal(from_json, from_b64)
    if embedding_type in ("binary", "ubinary"):
        assert len(encoded) == 2  # ceil(10 / 8) bytes
        np.testing.assert_array_equal(bits(encoded.tolist(), embedding_type, len(UNIT)), (UNIT > 0).astype(np.uint8))
        np.testing.assert_allclose(np.linalg.norm(from_json), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(np.sign(from_json), np.where(UNIT > 0, 1.0, -1.0))
    else:
        step = {"float32": 0.0, "float16": 5e-4, "int8": 0.5 / 127, "uint8": 0.5 / 127}[embedding_type]
        np.testing.assert_allclose(from_json, UNIT, rtol=0, atol=step + 1e-7)


def test_outputs_float32_base64_is_openais_little_endian_float32():
    assert base64.b64decode(to_base64(UNIT, "float32")) == UNIT.astype("<f4").tobytes()
    assert raw(to_base64(encode(UNIT, "float16"), "float16"), "float16").dtype == np.float16


def test_outputs_dimensions_truncate_and_renormalise():
    out = OutputSpec("float32", 4).apply(UNIT)
    np.testing.assert_allclose(out, UNIT[:4] / np.linalg.norm(UNIT[:4]), rtol=1e-6)
    assert OutputSpec().apply(UNIT) is not None and OutputSpec().plain


@pytest.mark.parametrize(
    ("dimensions", "matryoshka", "message"),
    [
        (32, (), "dimensions=32 is not offered: m gives 64 (it is not trained to be truncated"),
        (20, (16, 32), "dimensions=20 is not offered: m gives 64, or 16, 32 (matryoshka)"),
        (128, (16, 32, 128), "dimensions=128 is not offered: m gives 64, or 16, 32 (matryoshka)"),
        (0, (16,), "dimensions=0 is not offered"),
    ],
)
def test_outputs_dimensions_a_model_cannot_give_are_refused(dimensions, matryoshka, message):
    with pytest.raises(InvalidRequest, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        OutputSpec("float32", dimensions).check("m", 64, matryoshka)


@pytest.mark.parametrize(("dimensions", "matryoshka"), [(None, ()), (64, ()), (32, (16, 32))])
def test_outputs_dimensions_a_model_gives_pass(dimensions, matryoshka):
    OutputSpec("float32", dimensions).check("m", 64, matryoshka)


def test_signing_options_leave_a_request_without_them_as_it_was_signed():
    assert signing.options_payload_id("abc", {"model": None, "embedding_type": None}) == "abc"
    assert signing.options_payload_id("abc", {}) == "abc"


def test_signing_each_option_set_gets_its_own_payload_id():
    option_sets = [
        {"model": "a"},
        {"embedding_type": "int8"},
        {"dimensions": 32},
        {"model": "a", "embedding_type": "int8"},
        {"model": "a|embedding_type=int8"},  # no value passes for another option's
        {"model": "int8"},
    ]
    ids = [signing.options_payload_id("abc", options) for options in option_sets]
    assert len(set(ids)) == len(option_sets) and "abc" not in ids
    assert signing.options_payload_id("abd", option_sets[0]) not in ids
