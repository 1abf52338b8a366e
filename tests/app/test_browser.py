"""The app in a real browser: Debian's chromium driven by playwright (never `playwright install`).

Loads the page (which opens on an example), uploads an image and runs, checks that the three maps
rendered, plays the PC-MMR animation and sees the displayed round change, moves the budget slider
and sees the kept count change, clicks a patch and sees its duplication row. Screenshots go to
test-output/; with DUALVIEW_UPDATE_SCREENSHOT=1 the first one is copied to docs/screenshot.png.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from dualview.figures.curves import METRICS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000
# page coordinates from plotly's own axes (layout.meta carries token ids, points and boxes)
POINT_OF_FIRST_KEPT = """() => {
  const gd = document.querySelector('#space .js-plotly-plot');
  const token = gd.layout.meta.dv_ids[1][0];
  const [x, y] = gd.layout.meta.dv_points[token];
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)];
}"""
CENTRE_OF_TOKEN_ON_MAP = """(token) => {
  const gd = document.querySelector('#map-kept .js-plotly-plot');
  const [x0, y0, x1, y1] = gd.layout.meta.dv_boxes[token];
  const suffix = gd.layout.meta.dv_xref[token].slice(1);
  const xa = gd._fullLayout['xaxis' + suffix], ya = gd._fullLayout['yaxis' + suffix], r = gd.getBoundingClientRect();
  return [r.left + xa._offset + xa.l2p((x0 + x1) / 2), r.top + ya._offset + ya.l2p((y0 + y1) / 2)];
}"""


@pytest.fixture(scope="module")
def app_url(served):
    """The session's app (tests/app/conftest.py) on the built-in model."""
    return served["url"], served["examples"]


@pytest.fixture(scope="module")
def page(app_url):
    assert Path(CHROMIUM).is_file(), "chromium is missing: apt-get install -y chromium (see .ci/run)"
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1250})
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def kept_count(page) -> int:
    text = page.locator("#status").inner_text()
    return int(re.search(r"keeps (\d+) of", text).group(1))


def plot_title(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} .gtitle").first.text_content()


def heatmap_count(page, elem_id: str) -> int:
    return page.locator(f"#{elem_id} .hm image").count()


def test_the_whole_page_in_a_browser(app_url, page):
    url, examples = app_url
    page.goto(url)
    # the page opens on an example, already analysed
    expect(page.locator("#status")).to_contain_text("keeps", timeout=TIMEOUT_MS)

    # upload an image and run
    page.locator("#input-image input[type=file]").set_input_files(str(examples / "07_letter.png"))
    page.locator("#prompt textarea").fill("what letter is written?")
    page.locator("#run").click()
    expect(page.locator("#status")).to_contain_text("“what letter is written?”", timeout=TIMEOUT_MS)
    expect(page.locator("#teaching")).to_contain_text("Token 0")
    for elem_id in ("map-magnitude", "map-duplication", "map-kept"):
        expect(page.locator(f"#{elem_id} .js-plotly-plot")).to_be_visible()
        assert heatmap_count(page, elem_id) >= 1, f"{elem_id} drew no heat-map"
    page.screenshot(path=str(OUT / "app-maps.png"), full_page=True)
    if os.environ.get("DUALVIEW_UPDATE_SCREENSHOT") == "1":
        shutil.copy(OUT / "app-maps.png", ROOT / "docs" / "screenshot.png")

    # click a patch: its duplication row appears
    before = plot_title(page, "map-row")
    box = page.locator("#picker img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.7)
    expect(page.locator("#map-row .gtitle")).not_to_have_text(before, timeout=TIMEOUT_MS)
    token = int(page.locator("#token input").input_value())
    assert token != 0 and f"token {token}" in plot_title(page, "map-row")
    expect(page.locator("#teaching")).to_contain_text(f"Token {token}")

    # move the budget slider: the kept count follows
    count = kept_count(page)
    slider = page.locator("#budget input[type=range]")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.15, box["y"] + box["height"] / 2)
    expect(page.locator("#status")).not_to_contain_text(f"keeps {count} of", timeout=TIMEOUT_MS)
    new_count = kept_count(page)
    assert new_count != count
    assert int(page.locator("#budget input[type=number]").input_value()) == new_count
    expect(page.locator("#map-kept .gtitle")).to_contain_text(f"Kept: {new_count} /")
    expect(page.locator("#answers")).to_contain_text("full (all tokens)", timeout=TIMEOUT_MS)  # the chained answer

    # hover a token in the token space: the same token is outlined on the kept map, and back
    page.locator("#space").scroll_into_view_if_needed()
    x, y = page.evaluate(POINT_OF_FIRST_KEPT)
    page.mouse.move(x, y)
    expect(page.locator("#map-kept .js-plotly-plot > .dv-link")).to_be_visible()
    token_on_map = page.locator("#map-kept .js-plotly-plot").get_attribute("data-dv-linked")
    page.locator("#map-kept").scroll_into_view_if_needed()
    x, y = page.evaluate(CENTRE_OF_TOKEN_ON_MAP, int(token_on_map))
    page.mouse.move(x, y)
    expect(page.locator("#space .js-plotly-plot > .dv-link")).to_be_visible()
    assert page.locator("#space .js-plotly-plot").get_attribute("data-dv-linked") == token_on_map

    # play the PC-MMR animation: the displayed round changes by itself
    page.get_by_role("tab", name="PC-MMR step by step").click()
    expect(page.locator("#pcmmr-plot .gtitle")).to_contain_text("round 1/")
    first = plot_title(page, "pcmmr-plot")
    page.locator("#pcmmr-play").click()
    expect(page.locator("#pcmmr-plot .gtitle")).not_to_have_text(first, timeout=15_000)
    page.screenshot(path=str(OUT / "app-pcmmr.png"), full_page=True)
    page.locator("#pcmmr-pause").click()
    # the error curves arrive in the step chained after the run: one panel per metric, the budget marked
    page.get_by_role("tab", name="Low-rank error").click()
    expect(page.locator("#curves .js-plotly-plot")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#curves .gtitle, #curves .annotation-text")).to_have_count(len(METRICS), timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="PC-MMR step by step").click()
    page.wait_for_timeout(2_000)
    paused = plot_title(page, "pcmmr-plot")
    page.wait_for_timeout(2_500)
    assert plot_title(page, "pcmmr-plot") == paused, "the animation kept running after Pause"


def test_run_is_above_the_fold_and_the_answer_beside_the_maps_at_1280_by_800(app_url, page):
    """Issue 16 item 12: what a debugger watches is visible without scrolling or changing tabs."""
    url, _ = app_url
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url)
    expect(page.locator("#answers")).to_contain_text("full (all tokens)", timeout=TIMEOUT_MS)
    run = page.locator("#run").bounding_box()
    assert run["y"] + run["height"] <= 800, run
    answers, kept_map = page.locator("#answers").bounding_box(), page.locator("#map-kept").bounding_box()
    assert answers["y"] < 800 and page.locator("#answers").is_visible() and page.locator("#map-kept").is_visible()
    assert kept_map["x"] > 300  # in the maps column, beside the inputs
    assert "✅" not in page.locator("#answers").inner_text() and "⚠" not in page.locator("#answers").inner_text()
