"""Hardening, third round (issue 20): one test per class of fault, named after the class, each failing on
the code before its fix. The classes and these test names are listed in docs/reliability.md.
"""

import base64
import os

from click.testing import CliRunner

from flatness.cli.main import main


def invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def one_line_error(result, needle, code=2):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.output
    return lines[0]


def write_sweep(folder, measures, n_cells=9, method_name=None):
    """A finished sweep table whose measure columns carry the given names (the gap rises with ``a``)."""
    from flatness.sweep.cells import write_table

    records = []
    for i in range(n_cells):
        a, seed = i % 3 + 1, i // 3
        gap = a + 0.1 * seed
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": method_name or ("erm" if i % 2 else "sam"), "a": a},
                "seed": seed,
                "train_acc": 90.0,
                "test_acc": 90.0 - gap,
                "gap": gap,
                "test_error": 10.0 + gap,
                "status": "done",
                "measures": {name: gap * (k + 1) for k, name in enumerate(measures)},
            }
        )
    os.makedirs(folder, exist_ok=True)
    write_table(str(folder), records, ["method", "a"])


# --------------------------------------------------------------------------- class 1: report injection


def test_report_injection(tmp_path):
    """Names from cells.csv are text in every output, and the report reads no file it did not write."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nTHE-SECRET-BYTES-0123456789")
    encoded = base64.b64encode(secret.read_bytes()).decode()[:24]
    sweep = tmp_path / "sweep"
    measures = [
        f"![x]({secret})",  # an absolute path
        "![y](../secret.png)",  # a path out of the folder
        "<script>alert(1)</script>",
        "=HYPERLINK(1)",
        "$\\frac{a}{b}$",
    ]
    write_sweep(sweep, measures, method_name="<img src=x onerror=alert(1)>")
    result = invoke(["correlate", sweep, "--draws", "20"])
    assert result.exit_code == 0, result.output
    page = (sweep / "report.html").read_text()
    md = (sweep / "correlation.md").read_text()
    assert encoded not in page and "THE-SECRET" not in page
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert page.count("<img ") == 2  # the two figures correlate drew, nothing else
    assert "](" + str(secret) not in md.replace("\\]", "")  # the link is escaped text in the Markdown
    assert "\\!\\[x\\](/" in md and "\\!\\[y\\](../secret.png)" in md and "\\<script\\>" in md
    csv_text = (sweep / "correlation.csv").read_text()
    assert "'=HYPERLINK(1)" in csv_text and "\n=HYPERLINK" not in csv_text
    assert "THE-SECRET" not in result.output and "\x1b" not in result.output


def test_report_injection_experiment_report_embeds_only_its_own_figures(tmp_path):
    """The experiment's converter: a figure it wrote is embedded, a local file named in the text is not."""
    from flatness.study.report import markdown_to_html

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\nfigure")
    (tmp_path / "figures" / "other.png").write_bytes(b"\x89PNG\r\n\x1a\nnot-this-command")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\nOUTSIDE")
    os.symlink(outside, tmp_path / "figures" / "link.png")
    md = "\n\n".join(
        [
            "![a](figures/ok.png)",
            "![b](figures/other.png)",
            f"![c]({outside})",
            "![d](figures/link.png)",
            "![e](file:///etc/passwd)",
        ]
    )
    page = markdown_to_html(md, str(tmp_path), "t", figures=[str(tmp_path / "figures" / "ok.png")])
    assert base64.b64encode(b"\x89PNG\r\n\x1a\nfigure").decode() in page
    for text in (b"not-this-command", b"OUTSIDE"):
        assert base64.b64encode(b"\x89PNG\r\n\x1a\n" + text).decode()[:16] not in page
    assert page.count("<img ") == 1 and 'src="file:' not in page and "<p>[c]</p>" in page
