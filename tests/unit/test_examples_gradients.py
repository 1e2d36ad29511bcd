"""The training example's gradient encodings: sizes and errors as documented, any length, and a clear
error for something that is not an encoded gradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.gradients import ENCODINGS, decode, encode, relative_error

GRADIENT = np.random.default_rng(3).normal(0, 1e-3, 300_000).astype(np.float32)


@pytest.mark.parametrize(
    "encoding, max_bytes, max_error",
    [("float32", 1_200_000, 0.0), ("float16", 600_000, 1e-3), ("int8", 300_000 + 74 * 4, 1.5e-2)],
)
def test_each_encoding_is_as_small_and_as_close_as_documented(encoding, max_bytes, max_error):
    encoded = encode(GRADIENT, encoding)
    size = len(encoded["data"]) + len(encoded.get("scales", b""))
    assert size <= max_bytes
    decoded = decode(encoded)
    assert decoded.dtype == np.float32 and decoded.shape == GRADIENT.shape
    assert relative_error(GRADIENT, decoded) <= max_error


@given(st.lists(st.floats(-1e3, 1e3, width=32), max_size=9000), st.sampled_from(ENCODINGS))
def test_any_length_round_trips_within_the_encodings_precision(values, encoding):
    original = np.array(values, dtype=np.float32)
    decoded = decode(encode(original, encoding))
    assert decoded.shape == original.shape
    bound = {"float32": 0.0, "float16": 1e-3, "int8": 1e-2}[encoding]
    assert np.all(
        np.abs(decoded - original) <= bound * max(1.0, float(np.abs(original).max(initial=0))) + 1e-6
    )


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown encoding 'bf16'"):
        encode(GRADIENT, "bf16")
    with pytest.raises(ValueError, match="not an encoded gradient"):
        decode({"enc": "int8", "data": b"\x01"})
    with pytest.raises(ValueError, match="unknown encoding"):
        decode({"enc": "zip", "data": b""})
