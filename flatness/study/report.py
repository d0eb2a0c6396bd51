"""The study's report: ``REPORT.md`` and ``report.html``, written from the comparison summary.

``REPORT.md`` links the figures relatively; ``report.html`` is one self-contained page (the same text,
rendered by markdown-it-py, with the images embedded as base64).

The verdict rule (stated in the report too): for each non-baseline method, the flat-minima claim
*held* in a run when that method's mean is lower (flatter) than the baseline's on more than half of
the flatness measures (Hessian eigenvalues, trace, every sharpness metric and radius); the report
lists which measures, their Welch p-values raw and Holm-adjusted, and which of them reach an
adjusted p < 0.05 (only adjusted significance is counted).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from markdown_it import MarkdownIt

from flatness.core.fileio import atomic_write_text
from flatness.core.markup import md_text, plain
from flatness.study.protocol_report import primary_section
from flatness.study.tables import format_mean_std, format_number, format_p, format_p_holm, markdown_table
from flatness.study.verdict import study_verdicts
from flatness.version import __version__

ALPHA = 0.05


# --------------------------------------------------------------------------- verdict


@dataclass
class FlatnessTally:
    """The flatness rows of one method against the baseline, sorted by the sign of the difference.

    ``significant_*`` hold the rows whose Holm-adjusted p is below ``ALPHA``: with a dozen measures some
    raw p < 0.05 happen by chance, so raw p-values are never counted.
    """

    rows: list[dict[str, Any]]
    flatter: list[dict[str, Any]]
    sharper: list[dict[str, Any]]
    significant_flatter: list[dict[str, Any]]
    significant_sharper: list[dict[str, Any]]

    @classmethod
    def of(cls, comp: dict[str, Any], method: str) -> FlatnessTally:
        """The tally of ``method`` in the comparison summary ``comp``."""
        rows = [r for r in comp["rows"] if r["flatness"] and r["versus"][method]["diff"] is not None]
        flatter = [r for r in rows if r["versus"][method]["diff"] < 0]
        sharper = [r for r in rows if r["versus"][method]["diff"] > 0]
        return cls(
            rows,
            flatter,
            sharper,
            [r for r in flatter if (r["versus"][method].get("p_holm") or 1.0) < ALPHA],
            [r for r in sharper if (r["versus"][method].get("p_holm") or 1.0) < ALPHA],
        )

    @property
    def held(self) -> bool:
        """The verdict rule: flatter on more than half of the measures."""
        return bool(self.rows) and len(self.flatter) > len(self.rows) / 2


def verdict(comp: dict[str, Any], method: str = "amp") -> dict[str, Any]:
    """What the numbers say about ``method`` versus the baseline, as data and as sentences.

    Args:
        comp: the comparison summary (``flatness.study.compare.compare``).
        method: the method judged against the baseline.

    Returns:
        ``{"method", "available", "held", "flatter", "sharper", "significant_flatter",
        "significant_sharper", "measures", "test_acc_better", "sentences"}`` (just ``method``,
        ``available`` and ``sentences`` when there is nothing to compare).
    """
    base = comp.get("baseline")
    if not base or method not in comp.get("others", []):
        return {"method": method, "available": False, "sentences": [f"No {method.upper()} runs to compare."]}
    tally = FlatnessTally.of(comp, method)
    s = _flatness_sentences(tally, method, base)
    acc = next((r for r in comp["rows"] if r["key"] == "test_acc"), None)
    acc_better = None
    if acc and acc["versus"][method]["diff"] is not None:
        acc_better = acc["versus"][method]["diff"] > 0
        s.append(_accuracy_sentence(acc, method, base))
    gap = next((r for r in comp["rows"] if r["key"] == "gap_loss"), None)
    if acc is None and gap and gap["versus"][method]["diff"] is not None:  # no accuracy: a regression loss
        s.append(_loss_gap_sentence(gap, method, base))
    n = min((r["methods"][m]["n"] for r in comp["rows"] for m in (base, method)), default=0)
    s += _seed_count_sentences(n)
    return {
        "method": method,
        "available": True,
        "held": tally.held,
        "flatter": [r["key"] for r in tally.flatter],
        "sharper": [r["key"] for r in tally.sharper],
        "significant_flatter": [r["key"] for r in tally.significant_flatter],
        "significant_sharper": [r["key"] for r in tally.significant_sharper],
        "measures": len(tally.rows),
        "test_acc_better": acc_better,
        "sentences": s,
    }


def _flatness_sentences(tally: FlatnessTally, method: str, base: str) -> list[str]:
    """The verdict on flatness: the rule's outcome, which measures went which way, which are significant."""
    M, B = method.upper(), base.upper()
    if not tally.rows:
        return [f"No flatness measure was available for both {M} and {B}; the flat-minima claim could not be tested."]

    def listing(items):
        return (
            ", ".join(
                f"{r['label']} (p = {format_p(r['versus'][method])}, Holm-adjusted "
                f"{format_p_holm(r['versus'][method])})"
                for r in items
            )
            or "none"
        )

    def labels(items):
        return ", ".join(r["label"] for r in items) or "none"

    rows, flatter, sharper = tally.rows, tally.flatter, tally.sharper
    sig_flat, sig_sharp = tally.significant_flatter, tally.significant_sharper
    return [
        f"**The flat-minima claim {'held' if tally.held else 'did not hold'} in this run** (rule: {M} flatter, "
        f"i.e. a lower mean than {B}, on more than half of the flatness measures): {M} was flatter on "
        f"{len(flatter)} of {len(rows)} measures and sharper on {len(sharper)}.",
        f"{M} flatter on: {listing(flatter)}.",
        f"{M} sharper on: {listing(sharper)}.",
        f"Differences significant at a Holm-adjusted p < {ALPHA} (Welch's t-test, adjusted over the "
        f"{len(rows)} flatness measures; raw p-values are not counted): {len(sig_flat)} in {M}'s favour "
        f"({labels(sig_flat)}), {len(sig_sharp)} against ({labels(sig_sharp)}).",
    ]


def _accuracy_sentence(acc: dict[str, Any], method: str, base: str) -> str:
    """The verdict on generalisation: the test-accuracy row, the one pre-specified test."""
    v = acc["versus"][method]
    M, B = method.upper(), base.upper()
    better = v["diff"] > 0
    return (
        f"**Test accuracy: {M} was {'better' if better else ('worse' if v['diff'] < 0 else 'equal')}** "
        f"— {M} {format_mean_std(acc['methods'][method])} % vs {B} {format_mean_std(acc['methods'][base])} %, "
        f"difference {format_number(v['diff'])} percentage points, p = {format_p(v)} (the one pre-specified "
        f"generalisation test, so Holm-adjusted p = raw p = {format_p_holm(v)})"
        + (" (not significant at 0.05 after adjustment)." if (v.get("p_holm") is None or v["p_holm"] >= ALPHA) else ".")
    )


def _loss_gap_sentence(gap: dict[str, Any], method: str, base: str) -> str:
    """The verdict on generalisation where the runs have no accuracy (a regression loss): the loss gap."""
    v = gap["versus"][method]
    M, B = method.upper(), base.upper()
    word = "better" if v["diff"] < 0 else ("worse" if v["diff"] > 0 else "equal")
    return (
        f"**Generalisation gap (test − train loss; these runs have no accuracy): {M} was {word}** — "
        f"{M} {format_mean_std(gap['methods'][method])} vs {B} {format_mean_std(gap['methods'][base])}, "
        f"difference {format_number(v['diff'])}, p = {format_p(v)}."
    )


def _seed_count_sentences(n: int) -> list[str]:
    """What ``n`` seeds per method allow the p-values to say."""
    if n < 2:
        return [
            "With a single seed per method no standard deviation or p-value exists: the differences above are "
            "single observations, not evidence."
        ]
    if n <= 5:
        return [
            f"With {n} seeds per method these p-values are weak evidence: a real difference can easily "
            "show p > 0.05; the Holm adjustment guards against chance hits among this many measures, "
            "at the price of missing weak real ones."
        ]
    return []


# --------------------------------------------------------------------------- Markdown


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _cell(text: str) -> str:
    # Labels name measures read from probe files: data, never markup ("|" would also end the cell).
    return md_text(text)


def _figure_md(figs: dict[str, str], key: str, root: str, caption: str) -> list[str]:
    if key not in figs:
        return []
    return [f"![{caption}]({_rel(figs[key], root)})", "", f"*{caption}*", ""]


def build_markdown(
    cfg,
    records,
    comp: dict[str, Any],
    figs: dict[str, str],
    steps: Sequence[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    protocols: dict[str, Any] | None = None,
    primary: list[dict[str, Any]] | None = None,
) -> str:
    """The report as Markdown (figures as links relative to ``cfg.out``).

    Args:
        cfg: the experiment's settings (dataset, model, methods, seeds, out, probe, grid, ...).
        records: one record per run (method, config, probe summary).
        comp: the comparison summary (rows, methods, baseline, others).
        figs: figure key -> file path.
        steps: the computing steps with their seconds.
        verdicts: ``verdict(comp, method)`` for each non-baseline method (all measures, exploratory).
        protocols: ``{"matched", "unreached", "comp_matched"}`` of the matched-loss protocol (None: none).
        primary: ``flatness.study.verdict.study_verdicts`` of both protocols (None: none).

    Returns:
        The Markdown text.
    """
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Does AMP find flatter minima? {md_text(cfg.dataset)} / {md_text(cfg.model)}",
        "",
        f"Generated {now} by flatness {__version__} (`flatness experiment`). Output folder: {md_text(cfg.out)}.",
        "",
    ]
    lines += ["## Verdict", ""]
    if primary:
        lines += primary_section(primary, comp, records, protocols or {})
        lines += ["### All flatness measures at a fixed budget (exploratory)", ""]
    for v in verdicts:
        lines += [f"- {s}" for s in v["sentences"]] + [""]
    lines += _setup_section(cfg, records)
    lines += _results_section(comp)
    if protocols and protocols.get("comp_matched"):
        lines += [
            "### Matched training loss",
            "",
            "The same table for the matched-loss checkpoints (`matched-loss/comparison.md`, `.json`, `.csv`):",
            "",
            markdown_table(protocols["comp_matched"]),
            "",
        ]
    lines += _figures_section(cfg, figs)
    lines += _cost_section(steps)
    lines += _caveats_section(cfg)
    return "\n".join(lines)


def _setup_section(cfg, records) -> list[str]:
    """How the runs were trained, probed and sliced, from the runs' own records."""
    first = next((r for r in records if r.config), None)
    tc = first.config if first else {}
    amp_cfg = next((r.config for r in records if r.method == "amp" and r.config), {})
    sam_cfg = next((r.config for r in records if r.method == "sam" and r.config), {})
    probe = next((r.probe for r in records if r.probe), {}) or {}
    pdata = probe.get("data") or {}
    # the runs' config.json and probe files are data: every value read from them is escaped
    tc, amp_md, sam_md = ({k: md_text(v) for k, v in c.items()} for c in (tc, amp_cfg, sam_cfg))
    data_name, split = md_text(pdata.get("dataset", cfg.dataset)), md_text(pdata.get("split", "train"))
    hess = probe.get("hessian") or {}
    trace = probe.get("trace") or {}
    L = [
        "## Setup",
        "",
        f"- Data: **{md_text(cfg.dataset)}**; model **{md_text(cfg.model)}**; methods "
        f"{', '.join(md_text(m.upper()) for m in cfg.methods)}; "
        f"seeds {', '.join(md_text(s) for s in cfg.seeds)} (one training run per method and seed)"
        + (" — **quick mode** (tiny settings for testing; the numbers mean little)" if cfg.quick else "")
        + ".",
        f"- Training: {tc.get('epochs', '?')} epochs, batch {tc.get('batch_size', '?')}, SGD lr {tc.get('lr', '?')} "
        f"(momentum {tc.get('momentum', '?')}, Nesterov {tc.get('nesterov', '?')}, weight decay "
        f"{tc.get('weight_decay', '?')}), schedule {tc.get('schedule', '?')} with milestones "
        f"{tc.get('milestones', '?')}, augmentation {tc.get('augment', '?')}"
        + (f", recipe {md_text(cfg.recipe)}" if cfg.recipe else "")
        + ".",
    ]
    if amp_cfg:
        L.append(
            f"- AMP: ε = {amp_md.get('epsilon')} ({amp_md.get('ball')} ball), inner_lr {amp_md.get('inner_lr')}, "
            f"inner_iter {amp_md.get('inner_iter')} (cost: {1 + int(amp_cfg.get('inner_iter') or 1)} "
            "forward-backward passes per step)."
        )
    if sam_cfg:
        L.append(f"- SAM: ρ = {sam_md.get('rho')}, adaptive {sam_md.get('adaptive')}.")
    L += [
        f"- Probe (every final checkpoint): {data_name} **{split}** "
        f"split, the first {pdata.get('samples', cfg.samples)} examples in dataset order, batches of "
        f"{pdata.get('batch_size', cfg.batch_size)}, model in eval mode (BatchNorm running statistics), "
        "no augmentation.",
        f"- Hessian: top-{len(hess.get('eigenvalues') or []) or cfg.probe.top_k} eigenvalues of the probe "
        f"loss by {hess.get('method', cfg.probe.eig_method)} (exact Hessian-vector products); trace by "
        f"Hutchinson ({(trace or {}).get('hvps', cfg.probe.trace_samples)} Rademacher vectors, "
        "± standard error in "
        "the probe files); spectral density by stochastic Lanczos quadrature (for the plotted seed "
        f"{cfg.seeds[0]} only). Eigenvalues and trace are in units of "
        "the loss (nats) per squared unit of weight.",
        "- Sharpness (same probe data; docs/metrics.md): keskar = ε-sharpness in % of (1 + L); worst_case / "
        "adaptive_worst_case = max loss increase in the ball of radius ρ (plain, or scaled by |θ|), in nats; "
        "average_case / adaptive_average_case = mean loss increase under Gaussian noise of scale ρ, in nats; "
        "pac_bayes(_magnitude) = 1/σ\\*² where σ\\* is the largest noise level raising the error by ≤ 0.1.",
        f"- Surfaces: seed {cfg.seeds[0]} of every method, the same random-direction seed for all, Gaussian "
        "directions filter-normalised (each filter scaled to the checkpoint's filter norm; biases and BatchNorm "
        f"ignored); 1D: {2 * cfg.grid - 1} points on [−1, 1]; 2D: {cfg.grid} × {cfg.grid} on [−1, 1]²; loss "
        f"{'' if _loss_only(cfg) else 'and accuracy '}on the first {cfg.samples} training examples and on the "
        "test split (eval mode). The "
        f"interpolation runs θ(α) = (1−α)·θ_ERM + α·θ_other on {2 * cfg.grid - 1} points of α ∈ [−0.5, 1.5].",
        "",
    ]
    return L


def _loss_only(cfg) -> bool:
    """Whether the study's loss has no accuracy (``--loss mse`` and the other regression losses)."""
    return (cfg.train_overrides or {}).get("loss") in ("mse", "l1", "huber", "bce")


def _results_section(comp: dict[str, Any]) -> list[str]:
    """The comparison table and what each of its rows measures."""
    L = [
        "## Results",
        "",
        "Mean ± sample standard deviation over seeds; the difference is other-method mean minus "
        "ERM mean; p from Welch's t-test, raw and Holm-adjusted. For every flatness measure lower means flatter.",
        "",
        markdown_table(comp),
        "",
    ]
    L += ["### What each row measures", "", "| quantity | unit | how it was measured |", "|---|---|---|"]
    for r in comp["rows"]:
        L.append("| " + " | ".join(_cell(c) for c in (r["label"], r["unit"] or "–", r["how"])) + " |")
    L += ["", "Per-run values: `comparison.csv` (one row per run, one column per quantity) and `comparison.json`.", ""]
    return L


def _figures_section(cfg, figs: dict[str, str]) -> list[str]:
    """Every figure with its caption, in reading order."""
    root = cfg.out
    L = ["## Figures", ""]
    L += _figure_md(
        figs,
        "training",
        root,
        f"Training curves, mean over seeds (band: ±1 std). Train loss{'' if _loss_only(cfg) else '/accuracy'} are "
        "running means during each epoch; test values are on the full test split after each epoch.",
    )
    L += _figure_md(
        figs,
        "spectra",
        root,
        "Hessian spectral density (log scale) of one seed per method; dotted lines: its top eigenvalues.",
    )
    L += _figure_md(figs, "spectra-all", root, "Hessian spectral densities and top eigenvalues of every run.")
    for key, name in (("fixed", "at a fixed budget"), ("matched", "at matched training loss")):
        L += _figure_md(
            figs,
            f"profile-{key}",
            root,
            f"Worst-case and average-case sharpness against the radius ρ {name}: mean over seeds, band 95 % "
            "bootstrap interval of the mean. Where the curves cross, which method is flatter depends on the scale.",
        )
    L += _figure_md(
        figs,
        "slices-1d",
        root,
        f"1D loss{'' if _loss_only(cfg) else ' and accuracy'} along a random filter-normalised direction "
        "(solid: train probe data, dashed: test split). A wider, lower valley is flatter.",
    )
    L += _figure_md(figs, "contours-2d", root, "2D train loss around each checkpoint, shared colour scale.")
    for m in cfg.methods:
        L += _figure_md(
            figs, f"contour-{m}", root, f"{m.upper()} seed {cfg.seeds[0]}: 2D train-loss contours (levels labelled)."
        )
    for m in cfg.methods:
        L += _figure_md(figs, f"3d-{m}", root, f"{m.upper()} seed {cfg.seeds[0]}: the 2D surface in 3D.")
    L += _figure_md(
        figs,
        "interp",
        root,
        "Linear interpolation from the ERM checkpoint (α = 0) to the other "
        "method's checkpoint (α = 1), same seed. A barrier between them means separate basins.",
    )
    return L


def _cost_section(steps: Sequence[dict[str, Any]]) -> list[str]:
    """Seconds of every computing step that ran (this invocation or an earlier one)."""
    L = ["## Cost", "", "| step | seconds | |", "|---|---|---|"]
    total = 0.0
    for s in steps:
        if s.get("skipped"):
            continue
        total += float(s.get("seconds") or 0)
        L.append(
            f"| {s['step']} | {float(s.get('seconds') or 0):.1f} | {'earlier invocation' if s.get('earlier') else ''} |"
        )
    L += [f"| **total** | **{total:.1f}** | wall-clock seconds of the computing steps |", ""]
    return L


def _caveats_section(cfg) -> list[str]:
    """What the numbers cannot say."""
    return [
        "## Caveats",
        "",
        f"- {len(cfg.seeds)} seed(s) per method: the spread between seeds is estimated from very few runs, so the "
        "p-values are weak evidence; significance is judged on Holm-adjusted p-values (raw ones shown beside).",
        "- Plain (non-adaptive) sharpness, eigenvalues and the trace change when a ReLU layer is scaled by α and "
        "the next by 1/α, and BatchNorm makes the loss invariant to the scale of the preceding weights; weight "
        "decay differences between methods can therefore move these numbers without any change in the function. "
        "The adaptive metrics are invariant to such rescaling: compare both.",
        "- The surfaces are one random 1D/2D slice of a high-dimensional landscape of one seed; they illustrate, "
        "they do not measure.",
        "- AMP trains on worst_case sharpness at ρ = its ε with its ball; being flatter there is partly by "
        "construction.",
        "",
    ]


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.5;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin-top:1em}code{background:#f4f4f4;padding:0 .2em}
em{color:#555}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def _inside(path: str, root: str) -> bool:
    """True when ``path``, links followed, is ``root`` or lies under it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _image_source(src: str, root: str, figures: frozenset[str] | None) -> str | None:
    """What an image link may point to in the page (None: no image at all).

    A ``data:`` URI for a figure the command wrote, the link itself for a relative path inside
    ``root`` that is not there, else None.

    A report's Markdown holds names from other people's files, so a link is never trusted to say
    which file to read: only a file under ``root`` (links followed) that is one of ``figures`` is
    read, never an absolute path, ``..`` or a URL.
    """
    target = unquote(src)  # the Markdown parser percent-encodes link targets
    if not target or "://" in target or target.startswith(("/", "\\")) or ":" in target.split("/", 1)[0]:
        return None
    path = os.path.join(root, target)
    if not _inside(path, root):
        return None
    if figures is not None and os.path.realpath(path) not in figures:
        return None if os.path.exists(path) else src
    if not os.path.isfile(path) or target.rsplit(".", 1)[-1].lower() not in _MIME:
        return src if not os.path.exists(path) else None
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return f"data:{_MIME[target.rsplit('.', 1)[-1].lower()]};base64,{data}"


_MIME = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg", "jpeg": "image/jpeg"}


def markdown_to_html(md: str, root: str, title: str, embed: bool = True, figures: Iterable[str] | None = None) -> str:
    """Render the report's Markdown as one HTML page (CommonMark and GFM tables, by markdown-it-py).

    Args:
        md: the Markdown text.
        root: the folder relative image links are resolved against.
        title: the page title.
        embed: embed the figures as base64, so the page needs no other file.
        figures: the image files the command itself wrote (under ``root``); only these are embedded.
            None allows any image file under ``root`` (links followed), never one outside it.

    Returns:
        The HTML document.
    """
    # Raw HTML off: labels and paths in the report are data, never markup, so they are escaped.
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    default_image = renderer.renderer.rules["image"]
    allowed = None if figures is None else frozenset(os.path.realpath(f) for f in figures)

    def image(renderer_self, tokens, idx, options, env):  # add_render_rule binds the rule as a method
        token = tokens[idx]
        src = _image_source(token.attrGet("src") or "", root, allowed)
        if src is None:  # not a figure of this report: its caption as text, nothing loaded
            return html.escape(f"[{renderer_self.renderInlineAsText(token.children or [], options, env)}]")
        if embed:
            token.attrSet("src", src)
        return default_image(tokens, idx, options, env)

    renderer.add_render_rule("image", image)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + renderer.render(md)
        + "</body></html>\n"
    )


def write_report(
    cfg,
    records,
    comp: dict[str, Any],
    figs: dict[str, str],
    steps: Sequence[dict[str, Any]],
    protocols: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``REPORT.md`` and ``report.html`` into ``cfg.out``; return their paths and the verdicts.

    With ``protocols`` (the matched-loss runs and comparison) the verdict is the primary measures' under
    both protocols (``flatness.study.verdict``); without, the all-measures verdict of ``verdict``.
    """
    verdicts = [verdict(comp, m) for m in comp.get("others", [])]
    primary = None
    if protocols is not None:
        primary = study_verdicts(
            [{"name": "Fixed budget", "comp": comp}, {"name": "Matched loss", "comp": protocols.get("comp_matched")}]
        )
    md = build_markdown(cfg, records, comp, figs, steps, verdicts, protocols, primary)
    md_path = os.path.join(cfg.out, "REPORT.md")
    html_path = os.path.join(cfg.out, "report.html")
    atomic_write_text(md_path, md)
    title = f"flatness report: {plain(cfg.dataset)} / {plain(cfg.model)}"
    atomic_write_text(html_path, markdown_to_html(md, cfg.out, title, figures=figs.values()))
    return {"markdown": md_path, "html": html_path, "verdict": primary if primary is not None else verdicts}
