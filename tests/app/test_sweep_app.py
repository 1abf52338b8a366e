"""The Sweep tab's ``/sweep`` endpoint through gradio_client on the built-in model: tables equal
to the files it offers, the app's bound, one-sentence errors."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from dualview import sweep  # noqa: E402
from dualview.app.examples import load_examples  # noqa: E402
from dualview.app.handlers import PARAM_CONTROLS  # noqa: E402
from dualview.engine.loading import BUILTIN_DIR  # noqa: E402

pytestmark = pytest.mark.skipif(not (BUILTIN_DIR / "config.json").is_file(), reason="the built-in model is not here")
DEFAULTS = [param.default for _, param in PARAM_CONTROLS]
LAST_LAYER = (json.loads((BUILTIN_DIR / "config.json").read_text())["text_config"]["num_hidden_layers"] - 1
              if (BUILTIN_DIR / "config.json").is_file() else None)


def call(client, methods, budgets, seeds, layer="", params=None):
    return client.predict("builtin", layer, methods, budgets, seeds, *(params or DEFAULTS), api_name="/sweep")


def test_sweep_of_the_examples_shows_the_flip_table_and_offers_csv_and_json(served):
    client = Client(served["url"], verbose=False)
    text, table, items, files = call(client, ["iwp", "random"], "11.1%", "0, 1")
    examples = load_examples(served["examples"])
    assert text.startswith(f"{len(examples)} examples × 3 runs = {3 * len(examples)} pruned answers on `builtin`")
    assert "iwp has no seed" in text
    assert sorted(os.path.basename(f) for f in files) == ["sweep-summary.csv", "sweep.csv", "sweep.json"]
    data = json.loads(open(next(f for f in files if f.endswith(".json"))).read())
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["max_new_tokens"] == 8
    assert [r["item"] for r in data["rows"][::3]] == [e["name"] for e in examples]
    assert all(r["expected"] == e["answer"] for r, e in zip(data["rows"][::3], examples))
    summary = {e["method"]: e for e in data["summary"]}
    assert table["headers"] == ["method", "11.1%"]
    assert [row[0] for row in table["data"]] == ["iwp", "random (2 seeds)"]
    for row, method in zip(table["data"], ("iwp", "random")):
        assert row[1].endswith(f"({summary[method]['flips']}/{summary[method]['answers']})")
    assert summary["random"]["answers"] == 2 * len(examples) and summary["iwp"]["answers"] == len(examples)
    flips = {e["item"]: e["flips"] for e in data["item_flips"]}
    assert items["headers"] == ["item", "full answer", "iwp", "random"]
    for name, full, iwp, random in items["data"]:
        assert (iwp == "11.1%") == ("iwp" in flips[name])
        assert bool(random) == ("random" in flips[name])


def test_sweep_errors_are_one_sentence(served):
    client = Client(served["url"], verbose=False)
    examples = load_examples(served["examples"])
    too_many = ",".join(map(str, range(1, 30)))
    cases = [((["iwp"], "11.1%, 250%", "0"), "keeps more than all visual tokens"),
             (([], "11.1%", "0"), "at least one of its methods"),
             ((["random"], "11.1%", "0, 0"), "names 0 more than once"),
             ((["iwp", "random"], too_many, "0"),
              f"{len(examples)} items × 58 runs = {58 * len(examples)} pruned answers, more than the limit of "
              f"{sweep.MAX_APP_RUNS}"),
             ((["iwp"], "11.1%", "0", "99"), f"pruning layer must be a whole number from 0 to {LAST_LAYER}"),
             ((["iwp", "oracle"], "11.1%", "0"), "does not run oracle (its cost grows")]  # the handler's, not gradio's
    for args, message in cases:
        with pytest.raises(AppError) as error:
            call(client, *args[:3], layer=args[3] if len(args) > 3 else "")
        assert message in str(error.value) and "Traceback" not in str(error.value)


def test_the_app_sweep_refuses_the_oracle_before_any_work():
    from dualview.app import handlers
    from dualview.app.models import ModelHolder
    from dualview.errors import DualviewError

    holder = ModelHolder()
    with pytest.raises(DualviewError, match=r"does not run oracle \(its cost grows"):
        handlers.sweep(holder, load_examples(), "builtin", "", ["iwp", "oracle"], "11.1%", "0", DEFAULTS)
    assert holder._sessions == {}  # nothing was loaded
