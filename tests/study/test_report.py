"""report.html in a real browser: Debian's headless chromium (through Selenium and chromedriver) loads the
report of a quick experiment with no console error and decodes every embedded figure.

Chromium is installed with apt when /usr/bin/chromium is missing and we are root; where that cannot be done
the tests are skipped with the reason (shown by ``pytest -rs``, which scripts/test.sh passes).
The report's verdict on a hand-made comparison summary: the rule (flatter on more than half of the
flatness measures), which measures count as significant (Holm-adjusted p only), and its sentences."""

import os
import shutil
import subprocess

import pytest

from flatness.study.report import verdict

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


def cell(mean, n=3):
    return {"mean": mean, "std": 1.0 if n > 1 else None, "n": n, "values": [mean] * n}


def row(key, flatness, diff, p, p_holm, n=3):
    return {
        "key": key,
        "label": key,
        "unit": "",
        "flatness": flatness,
        "better": "lower" if flatness else "higher",
        "methods": {"erm": cell(10.0, n), "amp": cell(10.0 + (diff or 0.0), n)},
        "versus": {"amp": {"diff": diff, "p": p, "p_holm": p_holm, "note": ""}},
    }


def summary(rows):
    return {"baseline": "erm", "methods": ["erm", "amp"], "others": ["amp"], "rows": rows}


def test_verdict_counts_flatter_and_sharper_measures_and_only_holm_significance():
    comp = summary(
        [
            row("lambda_1", True, -2.0, 0.001, 0.01),  # flatter, significant after adjustment
            row("trace", True, -1.0, 0.02, 0.2),  # flatter; raw p < 0.05 but adjusted not: not counted
            row("sharp:wc", True, 0.5, 0.01, 0.03),  # sharper, significant
            row("sharp:none", True, None, None, None),  # no difference computed: not a measure
            row("test_acc", False, 1.0, 0.4, 0.4),
        ]
    )
    out = verdict(comp, "amp")
    assert out["available"] and out["held"]  # 2 of 3 measures flatter
    assert (out["flatter"], out["sharper"], out["measures"]) == (["lambda_1", "trace"], ["sharp:wc"], 3)
    assert (out["significant_flatter"], out["significant_sharper"]) == (["lambda_1"], ["sharp:wc"])
    assert out["test_acc_better"] is True
    text = " ".join(out["sentences"])
    assert "claim held" in text and "flatter on 2 of 3 measures and sharper on 1" in text
    assert "1 in AMP's favour (lambda_1), 1 against (sharp:wc)" in text
    assert "AMP was better" in text and "not significant at 0.05 after adjustment" in text
    assert "With 3 seeds per method" in text


@pytest.mark.parametrize(
    "diffs, held", [([-1.0, 1.0], False), ([-1.0, -1.0, 1.0], True), ([-1.0, 1.0, 1.0], False), ([], False)]
)
def test_verdict_rule_needs_more_than_half_of_the_measures_flatter(diffs, held):
    rows = [row(f"m{i}", True, d, 0.5, 1.0) for i, d in enumerate(diffs)] + [row("test_acc", False, -1.0, 0.5, 0.5)]
    out = verdict(summary(rows), "amp")
    assert out["held"] is held and out["measures"] == len(diffs) and out["test_acc_better"] is False
    if not diffs:
        assert "could not be tested" in out["sentences"][0]


def test_verdict_without_the_method_or_with_one_seed():
    assert verdict(summary([row("trace", True, -1.0, None, None)]), "sam") == {
        "method": "sam",
        "available": False,
        "sentences": ["No SAM runs to compare."],
    }
    out = verdict(summary([row("trace", True, -1.0, None, None, n=1)]), "amp")
    assert out["held"] and out["significant_flatter"] == [] and out["test_acc_better"] is None
    assert "single seed per method" in out["sentences"][-1]
