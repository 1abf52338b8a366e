"""The app's named endpoints, driven by gradio_client against the app launched in this process.

The app is the session's shared one (tests/app/conftest.py), on the built-in model; example scenes
are written fresh by the shapes-world generator.
"""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from dualview.engine.loading import BUILTIN_DIR  # noqa: E402
from tests.app.conftest import API_VIEWS  # noqa: E402

HAS_BUILTIN = (BUILTIN_DIR / "config.json").is_file()
RUN_OUTPUTS = len(API_VIEWS)
SUMMARY = API_VIEWS.index("summary")


@pytest.fixture(scope="module")
def app(served):
    return {"url": served["url"], "model": "builtin", "examples": served["examples"]}


def connect(app) -> Client:
    return Client(app["url"], verbose=False)


def run(client, app, example="04_count_objects", budget=5, method="iwp", prompt=None, layer="", b0=2, g=2, lam=5.0):
    meta = json.loads((app["examples"] / f"{example}.json").read_text())
    client.predict(example, api_name="/example")  # the example's sidecar (evidence) goes with the image
    out = client.predict(handle_file(str(app["examples"] / f"{example}.png")),
                         meta["question"] if prompt is None else prompt, app["model"], method, budget, layer,
                         b0, g, lam, api_name="/run")
    assert len(out) == RUN_OUTPUTS
    return out, meta


def plot_json(value) -> dict:
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def decode(array):
    """A plotly JSON array (plain list or plotly 7's typed {'dtype', 'bdata', 'shape'})."""
    if isinstance(array, dict):
        import base64

        data = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        shape = array.get("shape")
        if shape:
            data = data.reshape([int(s) for s in str(shape).split(",")])
        return data
    return np.asarray(array, dtype=float)


def cell_values(trace) -> dict:
    z, custom = decode(trace["z"]).astype(float), decode(trace["customdata"]).astype(float)
    custom = custom.reshape(z.shape + (-1,))
    return {int(custom[r, c, 0]): z[r, c] for r in range(z.shape[0]) for c in range(z.shape[1])
            if np.isfinite(custom[r, c, 0])}


def test_run_keeps_exactly_the_budget_in_pcmmr_chunks(app):
    client = connect(app)
    out, meta = run(client, app, budget=7)
    summary = out[SUMMARY]
    assert summary["kept_count"] == 7 == len(set(summary["kept"]))
    assert summary["settings"]["prompt"] == meta["question"]
    chunks = summary["pcmmr"]["chunks"]
    assert [len(c) for c in chunks] == [2, 4, 1]  # b0 = 2, g = 2, capped by the budget
    assert [t for c in chunks for t in c] == summary["kept"]
    rounds = np.array(summary["rounds"])
    assert sorted(np.nonzero(rounds >= 0)[0].tolist()) == sorted(summary["kept"])
    assert summary["answers"]["full"] is not None and isinstance(summary["answers"]["agree"], bool)
    # the kept-mask map draws exactly the kept tokens as kept
    kept_plot = plot_json(out[3])
    kept_cells = {}
    for trace in kept_plot["data"]:
        if trace.get("name") == "kept":
            kept_cells.update({t: z for t, z in cell_values(trace).items() if np.isfinite(z)})
    assert sorted(kept_cells) == sorted(summary["kept"])


def test_moving_the_budget_changes_the_kept_set_without_a_new_analysis(app):
    client = connect(app)
    run(client, app, budget=4)
    for budget in (3, 9):
        out = client.predict("iwp", budget, False, 2, 2, 5.0, api_name="/update")
        assert out[SUMMARY]["kept_count"] == budget
        animation = client.predict(api_name="/details")[4]  # the other views follow in their own step
        last_step = json.loads(animation["plot"])["layout"]["meta"]["dv_anim"]["steps"][-1]["title"]
        assert f" · kept {budget} · " in last_step, last_step
    answered = client.predict(api_name="/answer")
    assert answered[-1]["kept_count"] == 9 and answered[-1]["answers"]["tokens_after_pruning"] > 0


def test_oracle_error_curve_is_non_increasing_and_zero_with_every_token(app):
    client = connect(app)
    out, _ = run(client, app, budget=4)
    data = client.predict(True, api_name="/curve_data")
    budgets = data["budgets"]
    assert budgets == sorted(budgets) and budgets[-1] == out[SUMMARY]["num_visual"]
    oracle = data["methods"]["oracle"]["weight_error"]
    assert all(b <= a + 1e-9 for a, b in zip(oracle, oracle[1:]))
    for method, curves in data["methods"].items():
        assert curves["weight_error"][-1] == pytest.approx(0.0, abs=1e-9), method
        # at each budget the oracle's own objective is no worse than the magnitude-only selector
    assert all(o <= m + 1e-9 for o, m in zip(oracle, data["methods"]["iwp-magnitude"]["weight_error"]))


def test_inspecting_patches_shows_a_symmetric_duplication_row(app):
    client = connect(app)
    run(client, app)
    rows = {}
    for token in (2, 11):
        out = client.predict(token, "inspect", api_name="/inspect")
        assert out[0] == token
        rows[token] = {}
        for trace in plot_json(out[1])["data"]:
            if trace.get("type") == "heatmap":
                rows[token].update(cell_values(trace))
        assert rows[token][token] == pytest.approx(1.0)  # S̄²_ii = 1
        assert f"Token {token}" in out[2]
    assert rows[2][11] == pytest.approx(rows[11][2], abs=1e-6)


def test_forcing_patches_changes_the_kept_set(app):
    client = connect(app)
    out, _ = run(client, app, budget=5)
    kept = out[SUMMARY]["kept"]
    dropped = next(t for t in range(out[SUMMARY]["num_visual"]) if t not in kept)
    out = client.predict(kept[0], "force drop", api_name="/inspect")
    summary, answers = out[7], out[-1]
    assert kept[0] not in summary["kept"] and summary["kept_count"] == 4
    assert "press **Re-answer**" in answers  # the answers shown were made for the kept set before the click
    summary = client.predict(dropped, "force keep", api_name="/inspect")[7]
    assert dropped in summary["kept"] and summary["kept_count"] == 5
    answered = client.predict(api_name="/reanswer")
    assert answered[-1]["forced_keep"] == [dropped] and answered[-1]["forced_drop"] == [kept[0]]
    assert "full (all tokens)" in answered[0]
    cleared = client.predict(api_name="/clear_forced")
    assert cleared[-2]["kept"] == kept and "press **Re-answer**" in cleared[-1]


def test_animation_steps_and_export(app):
    client = connect(app)
    out, _ = run(client, app, budget=7)
    chunks = out[SUMMARY]["pcmmr"]["chunks"]
    frame = plot_json(client.predict(1, api_name="/pcmmr_step"))
    assert f"round 2/{len(chunks)}" in frame["layout"]["title"]["text"]
    kept_layer = next(t for t in frame["data"] if t.get("name") == "kept")  # the newest chunk in the chunk colour
    band = [stop[0] for stop in kept_layer["colorscale"] if stop[1] == "rgb(0,229,255)"]
    assert band == [1 / len(chunks), 2 / len(chunks)]
    classic = plot_json(client.predict(6, api_name="/classic_step"))
    assert "classic MMR · round 7/7" in classic["layout"]["title"]["text"]
    files, command = client.predict(api_name="/export")
    paths = [f if isinstance(f, str) else f["path"] if "path" in f else f["name"] for f in files]
    payload = json.loads(open(next(p for p in paths if p.endswith(".json"))).read())
    assert payload["kept"] == out[SUMMARY]["kept"] and len(payload["pcmmr_round_scores"]) == len(chunks)
    assert len(payload["magnitude"]) == payload["num_visual"]
    html = open(next(p for p in paths if p.endswith(".html"))).read()
    assert "plotly_sliderchange" in html and "dv_anim" in html and '<script src="http' not in html
    assert command.startswith("python -m dualview answer") and "--budget 7" in command and "--param lam=5" in command


def test_every_method_answers_at_the_budget(app):
    client = connect(app)
    run(client, app, budget=6)
    table, note = client.predict(api_name="/answer_all")
    assert note == "Every method's answers at 6 of 196 tokens (current)."
    rows = table["data"]
    methods = {row[0] for row in rows}
    assert {"iwp", "iwp-magnitude", "fastv", "divprune", "random", "oracle", "mmr"} <= methods
    assert all(row[1] == 6 for row in rows)


def test_bad_input_is_refused_with_one_sentence(app):
    client = connect(app)
    with pytest.raises(AppError, match="Run an analysis first"):
        client.predict("iwp", 5, False, 2, 2, 5.0, api_name="/update")
    for kwargs, message in [(dict(prompt="   "), "prompt is empty"), (dict(budget=0), "keeps no token"),
                            (dict(layer="99"), "pruning layer must be a whole number from 0 to"),
                            (dict(layer="two"), "pruning layer must be a whole number"),
                            (dict(budget=10_000), "more than the 196 visual tokens")]:
        with pytest.raises(AppError, match=message):
            run(client, app, **kwargs)
    run(client, app)
    with pytest.raises(AppError, match="does not exist"):
        client.predict(10_000, "inspect", api_name="/inspect")


def test_two_users_keep_their_own_results(app):
    first, second = connect(app), connect(app)
    run(first, app, budget=3)
    run(second, app, example="07_letter", budget=8)
    assert first.predict("iwp", 3, False, 2, 2, 5.0, api_name="/update")[SUMMARY]["kept_count"] == 3
    assert second.predict(api_name="/answer")[-1]["settings"]["example"] == "07_letter"


def test_full_answers_are_the_models_and_the_ground_truth_where_the_model_knows_it(app):
    """The app shows exactly what the model answers with all tokens; on the example scenes the
    built-in model gets right (it must get at least one), that is the ground truth."""
    import dualview
    from dualview.images import load_image

    assert HAS_BUILTIN, "the built-in model must be shipped in assets/shapes-vlm"
    session = dualview.load(app["model"], device="cpu")
    client = connect(app)
    known = 0
    for path in sorted(app["examples"].glob("*.png")):
        meta = json.loads(path.with_suffix(".json").read_text())
        direct = session.answer(session.prepare(load_image(str(path)), meta["question"]), max_new_tokens=8).text
        out, _ = run(client, app, example=path.stem, budget=69)
        assert out[SUMMARY]["answers"]["full"] == direct, path.stem
        known += direct == meta["answer"]
    assert known >= 1


def test_choices_and_ranges_reach_the_validator_so_the_api_gets_its_sentence(app):
    """Gradio's own component checks (a method not in the dropdown, a slider out of range, a
    Number's rounding) must not answer first: the API gets exactly the sentence the validator, the
    CLI's too, gives for the same value (issue 16)."""
    from PIL import Image

    from dualview.app import handlers
    from dualview.errors import DualviewError
    from dualview.validation import validate_request

    def sentence(call) -> str:
        with pytest.raises(DualviewError) as refused:
            call()
        return str(refused.value)

    image = Image.new("RGB", (8, 8))
    client = connect(app)
    for kwargs, params in [(dict(method="magic"), {}), (dict(lam=-1.0), {"lam": -1.0}), (dict(lam=101.0), {"lam": 101.0}),
                           (dict(b0=0), {"b0": 0}), (dict(b0=2.5), {"b0": 2.5}), (dict(g=17), {"growth": 17}), (dict(g=1.5), {"growth": 1.5})]:
        expected = sentence(lambda: validate_request(image, "q", 5, method=kwargs.get("method", "iwp"),
                                                     params={"b0": 2, "growth": 2, "lam": 5.0} | params))
        with pytest.raises(AppError) as refused:
            run(client, app, **kwargs)
        assert str(refused.value) == expected, kwargs
    run(client, app)
    for token in (1.5, -1):
        with pytest.raises(AppError) as refused:
            client.predict(token, "inspect", api_name="/inspect")
        assert f"Token {token!r} does not exist" in str(refused.value)  # not rounded to a token first
    with pytest.raises(AppError, match="A click's mode is 'inspect', 'force keep' or 'force drop', not 'peek'."):
        client.predict(3, "peek", api_name="/inspect")
    with pytest.raises(AppError) as refused:
        client.predict(["iwp", "magic"], api_name="/compare")
    assert str(refused.value) == sentence(lambda: handlers.get_method("magic"))
    with pytest.raises(AppError, match=r"Name each method to compare once, as a list: \['iwp', 'iwp'\]."):
        client.predict(["iwp", "iwp"], api_name="/compare")
