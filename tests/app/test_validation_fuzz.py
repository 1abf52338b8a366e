"""Property-based tests of the one request validator: any input gives either a valid request or a
DualviewError whose message is one line of plain text, never another exception."""

import io
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dualview.errors import DualviewError
from dualview.methods import method_names
from dualview.budget import resolve_budget
from dualview.images import MAX_PIXELS, load_image
from dualview.methods import get_method
from dualview.validation import MAX_PROMPT_CHARS, Request, validate_request

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMAGE = Image.new("RGB", (6, 4), (1, 2, 3))

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=20), st.lists(st.integers(), max_size=3),
    st.sampled_from(["", " ", "3", "0", "-1", "1.0", "0.5", "35%", "100%", "1e3", "nan", "inf", "1_000", "٣", "½",
                     "3\n4", "0x10", "+7", " 2 "]),
    st.builds(np.int64, st.integers(-10**6, 10**6)), st.builds(np.float32, st.floats(width=32)),
)


def refused_cleanly(error: DualviewError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message and "Traceback" not in message
    assert len(message) < 500


@FUZZ
@given(prompt=st.one_of(st.text(max_size=2100), anything), budget=anything,
       method=st.one_of(st.sampled_from(method_names()), st.text(max_size=12), anything),
       layer=anything, b0=anything, growth=anything, lam=anything,
       query=st.one_of(st.sampled_from(["text", " LAST", "all", "token:2"]), st.text(max_size=12), anything),
       num_visual=st.one_of(st.none(), st.integers(1, 3000)), num_layers=st.one_of(st.none(), st.integers(1, 80)))
def test_any_request_is_valid_or_refused_with_one_line(prompt, budget, method, layer, b0, growth, lam, query,
                                                       num_visual, num_layers):
    try:
        request = validate_request(IMAGE, prompt, budget, method=method, layer=layer,
                                   params={"b0": b0, "growth": growth, "lam": lam, "query": query}, num_visual=num_visual,
                                   num_layers=num_layers)
    except DualviewError as error:
        refused_cleanly(error)
        return
    assert isinstance(request, Request)
    assert request.image.mode == "RGB" and request.image.size == IMAGE.size
    assert request.prompt == request.prompt.strip() and 0 < len(request.prompt) <= MAX_PROMPT_CHARS
    assert request.method in method_names()
    assert request.layer is None or 0 <= request.layer < (num_layers or 10**9)
    assert request.method == "iwp"  # the only method with these four parameters
    for param in get_method("iwp").params:
        value = request.params[param.name]
        assert type(value) is type(param.default)
        assert param.check(value, "iwp") == value if param.is_choice else param.low <= value <= param.high
    assert request.params["query"] in ("text", "last", "all") or request.params["query"].startswith("token:")
    if num_visual is None:
        assert (isinstance(request.budget, int) and request.budget >= 1) or \
            (isinstance(request.budget, float) and 0.0 < request.budget <= 1.0)
    else:
        assert isinstance(request.budget, int) and 1 <= request.budget <= num_visual


@FUZZ
@given(budget=anything, num_visual=st.integers(1, 5000))
def test_any_budget_resolves_to_a_count_within_the_tokens_or_is_refused(budget, num_visual):
    try:
        count = resolve_budget(budget, num_visual)
    except DualviewError as error:
        refused_cleanly(error)
        return
    assert isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= num_visual


def decodes_or_refuses(source) -> None:
    try:
        image = load_image(source)
    except DualviewError as error:
        refused_cleanly(error)
        return
    assert image.mode == "RGB" and 1 <= min(image.size) and image.width * image.height <= MAX_PIXELS
    image.tobytes()  # fully decoded


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_bytes_decode_or_are_refused(data):
    decodes_or_refuses(data)


def encodings() -> dict:
    rng = np.random.default_rng(1)
    pixels = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = {}
    for fmt, mode in [("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("BMP", "P"),
                      ("GIF", "P"), ("PNG", "LA"), ("TIFF", "RGB")]:
        buffer = io.BytesIO()
        image = pixels.convert("L").convert("I;16") if mode == "I;16" else pixels.convert(mode)
        image.save(buffer, fmt)
        out[f"{fmt}-{mode}"] = buffer.getvalue()
    return out


ENCODED = encodings()


@FUZZ
@given(name=st.sampled_from(sorted(ENCODED)), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_truncated_or_corrupted_images_decode_or_are_refused(name, cut, flips):
    data = bytearray(ENCODED[name])
    for where, value in flips:
        data[int(where * len(data))] = value
    decodes_or_refuses(bytes(data[:max(1, int(cut * len(data)))]))


@FUZZ
@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
       fill=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-300, 70000)))
def test_any_array_decodes_or_is_refused(shape, dtype, fill):
    with np.errstate(all="ignore"):
        value = fill if np.issubdtype(dtype, np.floating) or not isinstance(fill, float) or math.isfinite(fill) else 0
        try:
            array = np.full(shape, value).astype(dtype)
        except (OverflowError, ValueError):
            array = np.zeros(shape, dtype=dtype)
    decodes_or_refuses(array)
