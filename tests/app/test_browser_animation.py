"""The selection animations in a real browser (issue 15 item 1): a selection sends its animation
once, and stepping or playing it redraws the plot in the page without calling the server.

Chromium is driven as in tests/app/test_browser.py (its fixtures are reused): the PC-MMR step
control shows the round asked for (title, the remaining tokens' scores, the kept tokens so far),
Play advances it and Pause stops it, and none of that sends a request to the app's queue.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from playwright.sync_api import expect  # noqa: E402

from tests.app.test_browser import TIMEOUT_MS, app_url, page  # noqa: E402,F401 - the shared browser fixtures

SHOWN = """(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  const anim = gd.layout.meta.dv_anim;
  const finite = (z) => Array.from(z).reduce((n, row) => n + Array.from(row).filter(Number.isFinite).length, 0);
  const remaining = anim.traces.remaining.reduce((n, i) => n + finite(gd._fullData[i].z), 0);
  const scale = gd._fullData[anim.traces.kept[0]].colorscale;
  const cells = anim.traces.remaining.reduce((n, i) => n + gd._fullData[i].customdata.flat().filter((c) => Number.isFinite(c[0])).length, 0);
  return {title: gd._fullLayout.title.text, steps: anim.steps.length, tokens: cells,
          remaining: remaining, transparent: /^rgba\(0, *0, *0, *0\)$/.test(scale[scale.length - 1][1]), last: scale[scale.length - 1][1]};
}"""


def queue_calls(page):
    """A list that fills with every request the page sends to the app's queue from now on."""
    calls = []
    page.on("request", lambda request: calls.append(request.url) if "/queue/join" in request.url else None)
    return calls


def set_step(page, prefix: str, value: int):
    box = page.locator(f"#{prefix}-step input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def kept_in(title: str) -> int:
    return int(title.split("kept ")[1].split(" ")[0])


def test_stepping_and_playing_run_in_the_browser(app_url, page):
    url, _ = app_url
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("keeps", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="PC-MMR step by step").click()
    expect(page.locator("#pcmmr-plot .gtitle")).to_contain_text("round 1/", timeout=TIMEOUT_MS)
    first = page.evaluate(SHOWN, "pcmmr-plot")
    total = first["steps"]
    assert total >= 3 and first["transparent"], first
    assert first["remaining"] == first["tokens"] - kept_in(first["title"])

    calls = queue_calls(page)
    for step in (2, total - 1, 1):
        set_step(page, "pcmmr", step)
        expect(page.locator("#pcmmr-plot .gtitle")).to_contain_text(f"round {step + 1}/{total}")
        shown = page.evaluate(SHOWN, "pcmmr-plot")
        # the heat-map holds the scores of exactly the tokens not kept up to this round
        assert shown["remaining"] == shown["tokens"] - kept_in(shown["title"]), shown
        assert shown["transparent"] == (step < total - 1)  # later rounds hidden until the last
    assert calls == [], f"stepping called the server: {calls}"

    page.locator("#pcmmr-play").click()
    expect(page.locator("#pcmmr-plot .gtitle")).not_to_contain_text(f"round 2/{total}", timeout=15_000)
    page.wait_for_timeout(2_500)  # a few more ticks
    page.locator("#pcmmr-pause").click()
    page.wait_for_timeout(1_500)
    paused = page.evaluate(SHOWN, "pcmmr-plot")
    step = int(page.locator("#pcmmr-step input[type=number]").input_value())
    assert f"round {step + 1}/{total}" in paused["title"]  # the control and the plot agree
    assert paused["remaining"] == paused["tokens"] - kept_in(paused["title"])
    page.wait_for_timeout(2_000)
    assert page.evaluate(SHOWN, "pcmmr-plot")["title"] == paused["title"], "the animation kept running after Pause"
    assert len(calls) == 2, f"Play and Pause call the server once each, the ticks never: {calls}"


def test_classic_mmr_steps_in_the_browser(app_url, page):
    url, _ = app_url
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("keeps", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Classic MMR").click()  # computed when the tab opens
    expect(page.locator("#mmr-plot .gtitle")).to_contain_text("classic MMR · round 1/", timeout=TIMEOUT_MS)
    total = page.evaluate(SHOWN, "mmr-plot")["steps"]
    calls = queue_calls(page)
    set_step(page, "mmr", 4)
    expect(page.locator("#mmr-plot .gtitle")).to_contain_text(f"round 5/{total} · chunk of 1 · kept 5")
    assert calls == []


def test_the_exported_animation_opens_offline_and_plays(page, tmp_path):
    import torch

    from dualview import figures
    from dualview.engine.geometry import fixed_grid
    from dualview.selection import pc_mmr

    torch.manual_seed(0)
    layout = fixed_grid((224, 224), 14, (0.0, 0.0, 224.0, 224.0)).to_dict()
    features = torch.nn.functional.normalize(torch.randn(196, 6, dtype=torch.float64), dim=1)
    selection = pc_mmr(torch.rand(196, dtype=torch.float64), (features @ features.T) ** 2, 60, b0=2, growth=2, lam=5.0)
    animation = figures.selection_animation(layout, [c.tolist() for c in selection.chunks],
                                            [s.numpy() for s in selection.scores], selection.floored)
    path = tmp_path / "animation.html"
    path.write_text(figures.animation_html(animation))
    outside = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (outside.append(route.request.url), route.abort()))
    page.goto(path.as_uri())
    total = len(selection.chunks)
    expect(page.locator("#dv-animation .gtitle")).to_contain_text(f"round 1/{total}", timeout=TIMEOUT_MS)
    page.locator(".updatemenu-button", has_text="Play").click()
    expect(page.locator("#dv-animation .gtitle")).to_contain_text(f"round 3/{total}", timeout=10_000)
    page.locator(".updatemenu-button", has_text="Pause").click()
    shown = page.evaluate("() => document.querySelector('#dv-animation').layout.meta.dv_anim.steps.length")
    assert shown == total and outside == []
    page.unroute("**/*")
