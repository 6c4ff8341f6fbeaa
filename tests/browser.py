"""Open a report page in the distribution's chromium (driven by playwright, which never downloads a browser
here) and say what a person would see: console errors, network requests, charts drawn, hover text.

Used by tests/test_report.py and benchmarks/report_size.py.
"""

from __future__ import annotations

import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# WebGL (parallel coordinates) in a headless browser without a GPU: SwiftShader, which chromium asks for by name
CHROMIUM_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--no-sandbox"]
RENDERED = """() => [...document.querySelectorAll('.js-plotly-plot')].every(d => d._fullLayout
    && d.querySelector('.main-svg') && (d.data[0].type !== 'parcoords' || d.querySelector('canvas')))"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    open_s: float
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # div id -> {traces, blank, ...}
    hover_text: str | None = None
    screenshot: bytes = b""


def blank(png: bytes) -> bool:
    """True if an image is (nearly) one colour: a chart that drew nothing."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    histogram = image.histogram()
    return high - low < 30 or max(histogram) > 0.995 * sum(histogram)


def visit(path: str | Path, hover_figure: str | None = "fig-curves", timeout_s: float = 60) -> PageVisit:
    """Load the page from disk with every non-file request blocked and recorded; wait until every figure
    has drawn; screenshot each; then move the real mouse onto the first point of `hover_figure`'s first
    trace and read the hover label."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise RuntimeError("no chromium on PATH")
    url = Path(path).resolve().as_uri()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))

            def route(request_route: Any) -> None:
                requests.append(request_route.request.url)
                if request_route.request.url == url:
                    request_route.continue_()
                else:
                    request_route.abort()

            page.route("**/*", route)
            start = time.perf_counter()
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_function(RENDERED, timeout=timeout_s * 1000)
            opened = time.perf_counter() - start
            visit = PageVisit(open_s=opened, console_errors=errors, requests=[r for r in requests if r != url])
            for div_id, traces, kind in page.evaluate(
                    "() => [...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id, d.data.length, "
                    "d.data[0] ? d.data[0].type || 'scatter' : null])"):
                shot = page.locator(f"#{div_id}").screenshot()
                visit.figures[div_id] = {"traces": traces, "type": kind, "blank": blank(shot)}
            visit.screenshot = page.screenshot(full_page=True)
            if hover_figure:
                visit.hover_text = _hover(page, hover_figure)
            return visit
        finally:
            browser.close()


def _hover(page: Any, div_id: str) -> str | None:
    """Move the mouse onto the last point of the figure's first trace; the hover label's text, or None."""
    page.locator(f"#{div_id}").scroll_into_view_if_needed()
    x, y = page.evaluate(f"""() => {{
        const d = document.getElementById('{div_id}'), L = d._fullLayout, t = d._fullData[0];
        const i = t._length - 1, r = d.getBoundingClientRect();
        const xa = L.xaxis, ya = L.yaxis, xs = t.x[i], ys = t.y[i];
        return [r.left + L._size.l + xa.l2p(xa.d2l(xs)), r.top + L._size.t + ya.l2p(ya.d2l(ys))];
    }}""")
    page.mouse.move(x - 20, y - 20)
    page.mouse.move(x, y, steps=5)
    try:
        page.wait_for_selector(f"#{div_id} .hoverlayer .hovertext", timeout=5000)
    except Exception:
        return None
    return page.locator(f"#{div_id} .hoverlayer .hovertext").first.text_content()
