"""The built book as a reader's browser shows it: every page opened in headless
Chromium from disk, with no network, must have its title, load every image, typeset every formula
(no raw ``\\(`` left in the text: MathJax ships with the book) and link only to pages and anchors
that exist. Screenshots of two pages are kept in ``_build/screenshots`` (not committed).

Needs Debian's ``chromium`` (``.ci/run`` installs it; elsewhere ``apt-get install chromium``, or
point ``DMSQ_CHROMIUM`` at a Chromium binary) and the ``playwright`` package (tests/requirements.txt,
used only to drive that binary; it downloads nothing).
"""
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("DMSQ_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP = {"genindex.html", "search.html"}

pytestmark = [pytest.mark.book, pytest.mark.slow]


def _redirect(page: Path):
    """The target of a page that only redirects (``<meta http-equiv="refresh">``), else None."""
    m = re.search(r'http-equiv="refresh"[^>]*url=([^"\s>]+)', page.read_text(errors="replace"), re.IGNORECASE)
    return m.group(1) if m else None


def _pages(html: Path):
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts
                  and p.name not in SKIP and _redirect(p) is None)


def test_the_front_page_redirects_to_a_page_that_exists(built_book):
    html, _, _ = built_book
    target = _redirect(html / "index.html")
    assert target is None or (html / target).exists(), target


def _ids(page: Path) -> set:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(errors="replace")))


def test_internal_links_point_at_pages_and_anchors_that_exist(built_book):
    html, _, returncode = built_book
    assert returncode == 0
    broken, ids = [], {}
    for page in _pages(html):
        for href in re.findall(r'<a\b[^>]*\bhref="([^"]+)"', page.read_text(errors="replace")):
            if urlparse(href).scheme or href.startswith(("mailto:", "javascript:")):
                continue
            path, anchor = urldefrag(unquote(href))
            target = page if not path else (page.parent / path).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(html)} -> {href} (no such file)")
                continue
            if anchor and target.suffix == ".html":
                if anchor not in ids.setdefault(target, _ids(target)):
                    broken.append(f"{page.relative_to(html)} -> {href} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:40])


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium; .ci/run installs it)")
def test_every_page_shows_its_title_images_and_typeset_math_offline(built_book):
    pytest.importorskip("playwright", reason="pip install playwright (tests/requirements.txt)")
    from playwright.sync_api import sync_playwright

    html, _, returncode = built_book
    assert returncode == 0
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems, pages = [], _pages(html)
    assert len(pages) >= 8
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        for page_path in pages:
            name = str(page_path.relative_to(html))
            page = context.new_page()
            page.goto(page_path.as_uri(), wait_until="load")
            has_math = page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')")
            if has_math:
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=30000)
                page.evaluate("() => MathJax.startup.promise")
            title = page.title().strip()
            h1 = page.evaluate("() => (document.querySelector('main h1') || {}).textContent || ''").strip()
            if not title or not h1:
                problems.append(f"{name}: no title ({title!r}) or no heading ({h1!r})")
            bad_images = page.evaluate(
                "() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                ".map(i => i.getAttribute('src'))")
            problems += [f"{name}: image not loaded: {src}" for src in bad_images]
            text = page.evaluate("() => document.body.innerText")
            raw = [m.group(0) for m in re.finditer(r"\\\(.{0,30}|\\\[.{0,30}", text)]
            problems += [f"{name}: formula not typeset: {r!r}" for r in raw[:3]]
            if page_path.name in ("intro.html", "02_lattice_phi4_hmc.html"):
                page.screenshot(path=str(shots / (page_path.stem + ".png")), full_page=False)
            page.close()
        browser.close()
    assert not problems, "\n".join(problems[:60])
