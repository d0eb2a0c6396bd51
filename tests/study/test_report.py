"""report.html in a real browser: Debian's headless chromium (through Selenium and chromedriver) loads the
report of a quick experiment with no console error and decodes every embedded figure.

Chromium is installed with apt when /usr/bin/chromium is missing and we are root; where that cannot be done
the tests are skipped with the reason (shown by ``pytest -rs``, which scripts/test.sh passes)."""

import os
import shutil
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network, no first-run UI, no background services: the page alone decides what the console shows.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PAGE_STATE = """return {
  ready: document.readyState,
  title: document.title,
  tables: document.querySelectorAll('table').length,
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))
};"""


def _apt_install_chromium() -> str:
    """Install chromium and its driver with apt; return '' on success, else why it could not be done."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    packages = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium", "chromium-driver"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    attempt = subprocess.run(packages, capture_output=True, text=True, env=env)
    if attempt.returncode != 0:  # most often stale or missing package lists on a fresh machine
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        attempt = subprocess.run(packages, capture_output=True, text=True, env=env)
    if attempt.returncode != 0:
        return "apt-get install failed: " + " ".join((attempt.stderr or attempt.stdout).split()[-30:])
    return ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium driven by Selenium, with the browser console log captured."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        why = _apt_install_chromium()
        if why or not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
            pytest.skip(f"headless chromium unavailable ({CHROMIUM}, {CHROMEDRIVER}): {why or 'not installed'}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, path):
    """Load ``path`` (blocks until the load event) and return its state and the console errors it logged."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.get("file://" + os.path.abspath(path))
    state = driver.execute_script(PAGE_STATE)
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return state, errors


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    from click.testing import CliRunner

    from flatness.cli.main import main

    out = tmp_path_factory.mktemp("report") / "study"
    result = CliRunner().invoke(
        main,
        ["experiment", "--quick", "--seeds", "0,1", "--out", str(out), "--device", "cpu", "--no-progress"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out / "report.html"


def test_report_opens_in_headless_chromium_with_every_figure_decoded(browser, quick_report):
    state, errors = open_page(browser, quick_report)
    assert state["ready"] == "complete" and state["title"].startswith("flatness report: mnist1d / mlp1d")
    assert errors == []
    assert state["tables"] >= 3  # results, what each row measures, cost
    assert len(state["images"]) >= 7, state["images"]
    undecoded = [i["alt"][:60] for i in state["images"] if not (i["complete"] and i["width"] > 0)]
    assert undecoded == []


def test_the_browser_check_sees_a_broken_image_and_a_console_error(browser, tmp_path):
    """The checks above can fail: a page with an undecodable image and a script error trips both."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
        '<img src="data:image/png;base64,AAAA" alt="not a png">'
        '<script>console.error("deliberate failure")</script></body></html>'
    )
    state, errors = open_page(browser, page)
    assert [(i["complete"] and i["width"] > 0) for i in state["images"]] == [False]
    assert any("deliberate failure" in e["message"] for e in errors), errors


def test_markdown_to_html_embeds_images_renders_tables_and_escapes_markup(tmp_path):
    """No browser needed: the converter's output, parsed back, holds exactly what the Markdown said."""
    import base64
    import re
    from html.parser import HTMLParser

    from flatness.study.report import markdown_to_html

    (tmp_path / "figures").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # the bytes, not their meaning, must survive
    (tmp_path / "figures" / "a b.png").write_bytes(png)
    md = "\n".join(
        [
            "# Title <script>alert(1)</script>",
            "",
            "**bold** and `code`",
            "",
            "| quantity | how |",
            "|---|---|",
            "| adaptive | over ‖δ/\\|θ\\|‖_p ≤ ρ |",
            "| plain | ball |",
            "",
            "![a figure](figures/a%20b.png)",
            "",
            "![missing](figures/none.png)",
            "",
        ]
    )
    page = markdown_to_html(md, str(tmp_path), "t <1>")

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.rows[-1].append("")

        def handle_data(self, data):
            if self.tags and self.tags[-1] in ("td", "th"):
                self.rows[-1][-1] += data

        def handle_endtag(self, tag):
            self.tags.pop()

    parser = Cells()
    parser.feed(page)
    assert parser.rows == [["quantity", "how"], ["adaptive", "over ‖δ/|θ|‖_p ≤ ρ"], ["plain", "ball"]]
    assert "<script>" not in page and "&lt;script&gt;" in page and "<title>t &lt;1&gt;</title>" in page
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page
    sources = re.findall(r'<img src="([^"]*)" alt="([^"]*)"', page)
    assert [alt for _, alt in sources] == ["a figure", "missing"]
    embedded, missing = sources[0][0], sources[1][0]
    assert embedded.startswith("data:image/png;base64,")
    assert base64.b64decode(embedded.split(",", 1)[1]) == png
    assert missing == "figures/none.png"  # not found: left as a link rather than dropped
