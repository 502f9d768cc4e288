"""`huginn analyze`'s report.html in a real headless browser: Debian's chromium, driven by
Playwright's Python package through `executable_path` (Playwright's own browser download is not
used). Every figure loads (natural width > 0) and the console stays free of errors, with the
network cut off (the report must be self-contained). Skipped, with the reason, without a browser."""

from __future__ import annotations

import os
import shutil

import pytest

from huginn.analysis.figures import FIGURES
from tests.analysis.analysis_helpers import byte_tokenizer
from tests.conftest import run_main

pytestmark = pytest.mark.browser

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str | None:
    """The browser binary: $HUGINN_CHROMIUM, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("HUGINN_CHROMIUM")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def test_the_report_opens_with_every_figure_and_no_console_errors(fixture_dir, tmp_path, capsys):
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is not installed (pip install -e '.[browser]')"
    )
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set HUGINN_CHROMIUM)")
    tok = byte_tokenizer(tmp_path / "tok")
    out = tmp_path / "report"
    code, _, err = run_main(
        [
            "analyze",
            str(fixture_dir),
            "Fixed points & orbits <html>?",
            "--tokenizer",
            str(tok),
            "--out",
            str(out),
            "--num-steps",
            "16",
        ],
        capsys,
    )
    assert code == 0, err
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True)  # nothing may come from the network
            page = context.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto((out / "report.html").as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, done: i.complete, width: i.naturalWidth}))"
            )
            title = page.title()
        finally:
            browser.close()
    assert sorted(i["alt"] for i in images) == sorted(FIGURES)
    for image in images:
        assert image["done"] and image["width"] > 0, image
    assert errors == []
    assert title.startswith("huginn analyze")
