"""The one request validator: every input gives a usable request or one clear sentence."""

import math

import numpy as np
import pytest
from PIL import Image

from dualview.budget import resolve_budget
from dualview.errors import DualviewError
from dualview.validation import validate_request


@pytest.mark.parametrize("budget, n, expected", [
    (1, 196, 1), (196, 196, 196), (0.353, 196, 69), (1.0, 196, 196), (69.0, 196, 69), ("69", 196, 69),
    ("35.3%", 196, 69), ("0.111", 196, 22), (np.int64(5), 196, 5), (0.001, 196, 1),
])
def test_budgets_resolve_to_counts(budget, n, expected):
    assert resolve_budget(budget, n) == expected


@pytest.mark.parametrize("budget", [0, -3, float("nan"), math.inf, 1.5, 197, "lots", "150%", True, None, [3]])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(DualviewError):
        resolve_budget(budget, 196)


def test_request_fields_are_checked_with_the_model_limits():
    image = Image.new("RGB", (8, 8))
    request = validate_request(image, "  how many objects are there?  ", "22.2%", method="iwp", layer="3",
                               params={"b0": 4.0, "growth": "3", "lam": 2, "query": " Token:02"}, num_visual=196, num_layers=8)
    assert (request.prompt, request.budget, request.method, request.layer, request.params) \
        == ("how many objects are there?", 44, "iwp", 3, {"b0": 4, "growth": 3, "lam": 2.0, "query": "token:2"})
    assert validate_request(image, "q", 3, method="mmr").params == {"trade": 0.5, "query": "text"}  # the registry's defaults
    assert validate_request(image, "q", 3, method="fastv").params == {}
    assert validate_request(image, "q", 3, layer=" ").layer is None
    for kwargs, message in [
        (dict(prompt=" \n"), "prompt is empty"), (dict(prompt="x" * 5000), "more than the limit"),
        (dict(method="nope"), "Unknown method"), (dict(layer=8), "from 0 to 7"), (dict(layer="1.5"), "whole number"),
        (dict(params={"b0": 0}), "b₀"), (dict(params={"b0": 2.5}), "b₀"), (dict(params={"growth": 99}), "growth"),
        (dict(params={"lam": float("nan")}), "λ"), (dict(params={"lam": -0.1}), "λ"),
        (dict(method="mmr", params={"lam": 1}), "no parameter lam"), (dict(method="random", params={"seed": -1}), "seed"),
        (dict(params={"query": "first"}), "Unknown query choice"), (dict(method="fastv", params={"query": "text"}), "no parameter query"),
    ]:
        args = dict(prompt="q", method="iwp", layer=None) | kwargs
        with pytest.raises(DualviewError, match=message):
            validate_request(image, args.pop("prompt"), 3, num_layers=8, **args)
