"""Open every page of the built book in headless Chromium and fail on anything a reader would hit.

    python scripts/check_html.py [--html _build/html] [--chromium /usr/bin/chromium]

Serves the HTML on localhost and, for every page: records JavaScript console errors, uncaught
exceptions and failed requests; checks that every image loaded; checks that every internal link
points at an existing page and, for links with a #fragment, at an existing anchor; checks that
every chapter page (notebooks/*) has its "Open in Colab" launch link; checks that no code block
(cell source, cell output or code in the text) scrolls sideways in the 1280 px wide window; and saves
a full-page screenshot to _build/screenshots/. Chromium runs offline, with a fresh profile.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from playwright.sync_api import sync_playwright

# Each page gets this long to load, decode its images and typeset its math; a page that needs more
# is reported rather than waited on. (Waiting for network idle is not used: a page's widgets may keep
# a connection open, and Playwright's documentation discourages it.)
PAGE_TIMEOUT_MS = 20_000

# Resolves once every <img> has finished loading (or failed): decode() waits for the pixels.
IMAGES_SETTLED = """() => Promise.all(Array.from(document.images).map(
    i => i.decode().catch(() => null)))"""

# Resolves once MathJax 3 has finished its first typesetting pass.
MATH_TYPESET = """() => (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)
    ? window.MathJax.startup.promise.then(() => true) : false"""

# A laptop's window: book/_static/layout.css makes code up to about 110 characters a line fit in it.
WINDOW = {"width": 1280, "height": 900}

# The code blocks that scroll sideways in WINDOW, each as the start of its longest line.
# Collapsed cells (hide-input, a closed <details>) are opened first, since a reader who opens one
# meets the same code; closed dropdowns keep their content laid out at full width, so it is measured
# as it will show. Blocks not rendered at all (display: none) have no width to measure and are skipped.
WIDE_CODE = """() => {
    document.querySelectorAll('details').forEach(d => { d.open = true; });
    return Array.from(document.querySelectorAll('div.highlight pre'))
        .filter(pre => pre.getClientRects().length && pre.scrollWidth > pre.clientWidth + 2)
        .map(pre => pre.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a).trim().slice(0, 60));
}"""

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def settle(page, attempts: int = 3) -> None:
    """Wait until the page's images are decoded; a page that moves on by itself (index.html
    redirects to the first chapter) is followed, and its destination waited for instead."""
    for _ in range(attempts):
        try:
            page.wait_for_load_state("load")
            page.evaluate(IMAGES_SETTLED)
            return
        except Exception as error:
            if "context was destroyed" not in str(error) and "navigat" not in str(error):
                raise
    raise TimeoutError(f"the page kept navigating after {attempts} loads")


def pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html"}
    return sorted(p for p in html.rglob("*.html")
                  if p.name not in skip and not any(part.startswith(("_static", "_sources", "_images")) for part in p.parts))


def anchors(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        cache[path] = set(re.findall(r'id="([^"]+)"', path.read_text(errors="replace")))
    return cache[path]


def check(html: Path, chromium: str, shots: Path) -> list[dict]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    shots.mkdir(parents=True, exist_ok=True)
    results, anchor_cache = [], {}
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                           args=CHROMIUM_FLAGS, viewport=WINDOW)
            for path in pages(html):
                rel = path.relative_to(html).as_posix()
                problems = []
                page = browser.new_page()
                # A failed resource is reported with its URL by the response handler, not as the bare
                # console line. Chromium asks for /favicon.ico on its own, so that one is not the page's fault.
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
                page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
                page.on("pageerror", lambda e: problems.append(f"uncaught exception: {e}"))
                page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                try:
                    page.goto(f"{origin}/{rel}", wait_until="load", timeout=PAGE_TIMEOUT_MS)
                    settle(page)
                except Exception as error:
                    problems.append(f"page did not load within {PAGE_TIMEOUT_MS / 1000:.0f} s: {error}")
                broken_images = page.evaluate(
                    "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.currentSrc || i.src)")
                problems += [f"image did not load: {src}" for src in broken_images]
                links = page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
                for href in set(links):
                    if not href.startswith(origin):
                        continue
                    url = urlsplit(href)
                    target = html / unquote(url.path).lstrip("/")
                    if target.is_dir():
                        target = target / "index.html"
                    if not target.exists():
                        problems.append(f"broken link: {url.path}")
                    elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in anchors(target, anchor_cache):
                        problems.append(f"broken anchor: {url.path}#{url.fragment}")
                # Math must be typeset: MathJax replaces every \( ... \) span with an mjx-container.
                n_math = page.evaluate("document.querySelectorAll('span.math, div.math').length")
                if n_math:
                    try:
                        page.wait_for_function(MATH_TYPESET, timeout=PAGE_TIMEOUT_MS)
                        typeset = page.evaluate("document.querySelectorAll('mjx-container').length")
                    except Exception:
                        typeset = 0
                    if not typeset:
                        problems.append(f"{n_math} math elements but MathJax typeset none")
                colab = [h for h in links if "colab.research.google.com/github/" in h]
                if rel.startswith("notebooks/") and not colab:
                    problems.append("chapter page without its Colab launch link")
                title = page.title()
                shot = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
                try:
                    page.screenshot(path=str(shot), full_page=True)
                except Exception as error:
                    problems.append(f"no screenshot within {PAGE_TIMEOUT_MS / 1000:.0f} s: {error}")
                # After the screenshot, which should show the page as it opens: this opens collapsed cells.
                problems += [f"code scrolls sideways at {WINDOW['width']} px: {line!r}" for line in page.evaluate(WIDE_CODE)]
                page.close()
                results.append({"page": rel, "title": title, "images": page_images(html, path), "colab": colab[:1],
                                "screenshot": str(shot), "problems": problems})
            browser.close()
    finally:
        server.shutdown()
    return results


def page_images(html: Path, path: Path) -> int:
    return len(re.findall(r"<img\b", path.read_text(errors="replace")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build/html")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", default="_build/screenshots")
    args = parser.parse_args(argv)
    html, shots = Path(args.html), Path(args.screenshots)
    if not (html / "index.html").exists():
        print(f"no built book at {html}; run `make book` first", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"Chromium not found at {args.chromium} (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    results = check(html, args.chromium, shots)
    (shots / "report.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if r["problems"]]
    for r in results:
        status = "ok  " if not r["problems"] else "FAIL"
        print(f"{status} {r['page']:<40} {r['images']:>3} images  {'Colab' if r['colab'] else '     '}  {r['title']}")
        for problem in r["problems"]:
            print(f"       {problem}")
    print(f"\n{len(results)} pages checked in Chromium, {len(failed)} with problems; screenshots in {shots}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
