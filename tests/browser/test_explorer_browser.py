"""The explorer in headless Chromium: every view draws, widgets redraw, errors show in the page."""

import hashlib
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.browser

IDLE = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"
VIEWS = ("influence", "timeline", "samples", "memorization", "lineage", "attenuation", "compare")


def open_page(page, url, errors):
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.set_default_timeout(30_000)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_function(IDLE)


def shot(locator, path) -> bytes:
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=path)
    return hashlib.sha1(Image.open(path).convert("RGB").tobytes()).digest()


def colors(path) -> int:
    return len(Image.open(path).convert("RGB").getcolors(1 << 20))


def changed(locator, path, before: bytes, timeout_s: float = 15) -> bool:
    """Re-screenshot ``locator`` until its pixels differ from ``before``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if shot(locator, path) != before:
            return True
        time.sleep(0.3)
    return False


def test_every_view_renders_and_widgets_redraw(page, explorer, artifacts):
    errors = []
    open_page(page, explorer, errors)
    cards = {v: page.locator(f".view-{v}") for v in VIEWS}
    for v in ("influence", "timeline", "samples", "memorization", "lineage", "compare"):
        cards[v].locator("canvas").first.wait_for()
    for v in ("memorization", "attenuation"):  # event PNGs; before/after generations
        cards[v].locator("img").nth(1).wait_for()
    page.wait_for_function(IDLE)
    assert page.locator(".view-compare canvas").count() >= 2  # two runs side by side
    digests = {}
    for v in VIEWS:
        path = artifacts / f"explorer_{v}.png"
        digests[v] = shot(cards[v], path)
        assert colors(path) > 40, f"view {v} looks blank ({path})"
    for img in cards["memorization"].locator("img").all() + cards["attenuation"].locator("img").all():
        assert img.evaluate("e => e.complete && e.naturalWidth > 0")
    page.screenshot(path=artifacts / "explorer_page.png", full_page=True)

    # widget changes redraw their plots
    page.get_by_label("Checkpoint", exact=True).select_option("100")
    assert changed(cards["influence"], artifacts / "explorer_influence_2.png", digests["influence"])
    cards["timeline"].locator("select").select_option("stockco")
    assert changed(cards["timeline"], artifacts / "explorer_timeline_2.png", digests["timeline"])
    cards["samples"].get_by_label("Per-sample checkpoint").select_option("100")
    assert changed(cards["samples"], artifacts / "explorer_samples_2.png", digests["samples"])
    after = cards["attenuation"].locator("img").nth(1)  # the generations with the slot scaled
    src = after.get_attribute("src")
    handle = cards["attenuation"].locator(".noUi-handle").first
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")  # factor 0 -> 1: the slot back at full strength
    end = time.monotonic() + 20
    while after.get_attribute("src") == src and time.monotonic() < end:
        time.sleep(0.3)
    assert after.get_attribute("src") != src, "generations unchanged after moving the factor slider"
    shot(cards["attenuation"], artifacts / "explorer_attenuation_2.png")
    page.wait_for_function(IDLE)
    assert not errors, errors


def test_bad_index_shows_a_message_in_the_page(page, explore_runs, tmp_path, artifacts, launch, port,
                                               no_app_traceback):
    """`panel serve apps/explorer.py --args RUN ...`: a foreign index.nc is a message, the good run still draws."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text("name: bad\n")
    (bad / "index.nc").write_text("not a netCDF file\n")
    log = launch([sys.executable, "-m", "panel", "serve", "apps/explorer.py", "--port", str(port),
                  "--address", "127.0.0.1", "--liveness", "--warm", "--args", str(explore_runs[1]), str(bad)], port)
    errors = []
    open_page(page, f"http://127.0.0.1:{port}/explorer", errors)
    page.get_by_text("not a netCDF file").first.wait_for()
    page.locator(".view-influence canvas").first.wait_for()
    page.screenshot(path=artifacts / "explorer_bad_index.png", full_page=True)
    assert not errors, errors
    no_app_traceback(log)


NOTHING = ("no provenance index", "no memorization events", "has no slots", "no model.safetensors",
           "no source", "nothing to show")


def test_a_governed_demo_run_shows_every_governance_view(page, governed_demo, artifacts, launch, port,
                                                         no_app_traceback):
    """`govlab explore RUN` on a run of the demo preset: influence, timeline, memorization and the
    attenuation preview draw its data (no view says there is nothing to show)."""
    log = launch([str(Path(sys.executable).parent / "govlab"), "explore", str(governed_demo), "--port", str(port)],
                 port)
    errors = []
    open_page(page, f"http://127.0.0.1:{port}/explorer", errors)
    cards = {v: page.locator(f".view-{v}") for v in ("influence", "timeline", "memorization", "attenuation")}
    for v in ("influence", "timeline", "memorization"):
        cards[v].locator("canvas").first.wait_for()
    cards["attenuation"].locator("img").nth(1).wait_for()  # before and after scaling the slot
    page.wait_for_function(IDLE)
    for v, card in cards.items():
        for text in NOTHING:
            assert card.get_by_text(text).count() == 0, f"view {v} says {text!r}"
        path = artifacts / f"governed_demo_{v}.png"
        shot(card, path)
        assert colors(path) > 40, f"view {v} looks blank ({path})"
    for img in cards["attenuation"].locator("img").all():
        assert img.evaluate("e => e.complete && e.naturalWidth > 0")
    page.screenshot(path=artifacts / "governed_demo_page.png", full_page=True)
    assert not errors, errors
    no_app_traceback(log)
