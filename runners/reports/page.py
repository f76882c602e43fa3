"""One report page written twice as it is built: self-contained HTML (styles, a small script,
thumbnails inline) and Markdown, every value escaped for each.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
import re
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from runners.datasets import DatasetError, HubSource, HubTable, inside_root
from runners.metrics.summaries import percentile
from runners.reports.compare import Pair
from runners.reports.read import Run, number_or_none

THUMBNAIL_PX = 220
MAX_THUMBNAIL_SOURCE_PIXELS = 64_000_000
# A prompt, reference or answer is shown up to this many characters: marking the differences
# takes time quadratic in the length, and a page is for reading (the CSV files hold it all).
MAX_SHOWN_CHARS = 2000
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;
  padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;
  margin-top:32px}
h3{font-size:15px;margin-top:22px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.bar{background:linear-gradient(90deg,#cfe3ff calc(var(--v)*100%),transparent 0)}
.note{color:#666;font-size:12px}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:360px}
.sample{display:grid;grid-template-columns:230px 1fr;gap:12px;border:1px solid #ddd;
  padding:8px;margin:8px 0}
.sample img{max-width:220px;max-height:220px;border:1px solid #ccc}
.sample .text{white-space:pre-wrap;word-break:break-word}
del{background:#ffd6d6;text-decoration:none}ins{background:#c9f2c9;text-decoration:none}
.err{color:#b00}.cards{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
svg text{font-size:11px;fill:#444}
"""
# Sorting a table by a click on its header: the only script, so the page works without it.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.order !== "up"; th.dataset.order = up ? "up" : "down";
    rows.sort(function (x, y) {
      var a = x.cells[column].dataset.v || x.cells[column].textContent;
      var b = y.cells[column].dataset.v || y.cells[column].textContent;
      var d = (parseFloat(a) - parseFloat(b)) || a.localeCompare(b);
      return up ? d : -d;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


class Page:
    """The report, built once as HTML and once as Markdown, section by section."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._html: list[str] = []
        self._md: list[str] = [f"# {_md(title)}", ""]
        # A page's image shown twice is encoded once: by file, or by run and table cell.
        self._thumbnails: dict[Path | tuple[Path, str], str] = {}
        self._tables: dict[Path, HubTable | None] = {}  # each hf run's split, loaded once

    def open_cards(self) -> None:
        """What follows, up to :meth:`close_cards`, sits side by side (in HTML)."""
        self._html.append('<div class="cards">')

    def close_cards(self) -> None:
        self._html.append("</div>")

    def section(self, title: str, *, level: int) -> None:
        self._html.append(f"<h{level}>{_e(title)}</h{level}>")
        self._md += [f"{'#' * level} {_md(title)}", ""]

    def note(self, text: str) -> None:
        self._html.append(f'<p class="note">{_e(text)}</p>')
        self._md += [f"*{_md(text)}*", ""]

    def facts(self, facts: dict[str, Any]) -> None:
        items = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(shown(v))}</td></tr>" for k, v in facts.items()
        )
        self._html.append(f"<table>{items}</table>")
        self._md += [f"- **{_md(key)}**: {_md(shown(value))}" for key, value in facts.items()]
        self._md.append("")

    def table(self, rows: Sequence[dict[str, Any]], *, bars: Collection[str] = ()) -> None:
        """``rows`` as a sortable table; a cell of a column in ``bars`` holding a share (0 to
        1) gets a bar."""
        if not rows:
            self.note("(no rows)")
            return
        columns = list(rows[0])
        head = "".join(f"<th>{_e(column)}</th>" for column in columns)
        body = "".join(
            "<tr>" + "".join(_cell(column, row.get(column), bars) for column in columns) + "</tr>"
            for row in rows
        )
        self._html.append(
            f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
        self._md += [_md_row(columns), _md_row(["---"] * len(columns))]
        self._md += [_md_row([shown(row.get(column)) for column in columns]) for row in rows]
        self._md.append("")

    def histogram(self, values: Sequence[float], caption: str, bins: int = 30) -> None:
        if not values:
            self.note("no sample reached the model")
            return
        low, high = min(values), max(values)
        width = (high - low) / bins or 1.0
        counts = [0] * bins
        for value in values:
            counts[min(int((value - low) / width), bins - 1)] += 1
        tallest, plot_w, plot_h = max(counts), 600, 160
        bars = "".join(
            f'<rect x="{40 + i * plot_w / bins:.1f}" y="{10 + plot_h * (1 - c / tallest):.1f}" '
            f'width="{plot_w / bins - 1:.1f}" height="{plot_h * c / tallest:.1f}" fill="#6b9bd1">'
            f"<title>{c} samples from {low + i * width:.4g} s</title></rect>"
            for i, c in enumerate(counts)
        )
        right, base = 40 + plot_w, plot_h + 26
        axes = (
            f'<text x="40" y="{base}">{low:.4g} s</text>'
            f'<text x="{right}" y="{base}" text-anchor="end">{high:.4g} s</text>'
            f'<text x="2" y="18">{tallest}</text><text x="2" y="{plot_h + 10}">0</text>'
        )
        percentiles = _call_time_figures(values)
        self._html.append(
            f'<svg width="{plot_w + 60}" height="{plot_h + 34}" role="img">{bars}{axes}</svg>'
            f'<p class="note">{_e(caption)}; {_e(percentiles)}</p>'
        )
        self._md += [f"{_md(caption)}: {_md(percentiles)}", ""]

    def figure(self, figure: Any, caption: str) -> None:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        plt.close(figure)
        data = base64.b64encode(buffer.getvalue()).decode()
        self._html.append(f'<img alt="{_e(caption)}" src="data:image/png;base64,{data}">')
        self._md += [f"*{_md(caption)}: see report.html*", ""]

    def samples(self, rows: Sequence[dict[str, str]], run: Run, scores: list[str]) -> None:
        for row in rows:
            reference = shortened(_reference_text(row["reference"]))
            prediction, prompt = shortened(row["prediction"]), shortened(row["prompt"])
            figures = ", ".join(f"{name} {shown(number_or_none(row.get(name)))}" for name in scores)
            failure = f"; error: {row['error']}" if row.get("error") else ""
            error = f'<div class="err">error: {_e(row["error"])}</div>' if row.get("error") else ""
            self._html.append(
                f'<div class="sample">{self._thumbnail(row, run)}<div class="text">'
                f"<b>sample {_e(row['sample_id'])}</b> {_e(figures)}{error}\n"
                f"<b>prompt</b>: {_e(prompt)}\n"
                f"<b>reference</b>: {_diff(prediction, reference)[1]}\n"
                f"<b>prediction</b>: {_diff(prediction, reference)[0]}</div></div>"
            )
            self._md.append(
                f"- sample {_md(row['sample_id'])} ({_md(figures + failure)}): "
                f"prompt {_md_code(prompt)}, reference {_md_code(reference)}, "
                f"prediction {_md_code(prediction)}"
            )
        self._md.append("")

    def flips(self, pairs: Sequence[tuple[dict[str, str], dict[str, str]]], pair: Pair) -> None:
        for row_a, row_b in pairs:
            reference = shortened(_reference_text(row_a["reference"]))
            prompt_a, prompt_b = shortened(row_a["prompt"]), shortened(row_b["prompt"])
            answer_a, answer_b = shortened(row_a["prediction"]), shortened(row_b["prediction"])
            self._html.append(
                f'<div class="sample">{self._thumbnail(row_a, pair.a)}<div class="text">'
                f"<b>sample {_e(row_a['sample_id'])}</b>\n"
                f"<b>reference</b>: {_e(reference)}\n"
                f"<b>A</b> ({_e(prompt_a)}): {_diff(answer_a, reference)[0]}\n"
                f"<b>B</b> ({_e(prompt_b)}): {_diff(answer_b, reference)[0]}"
                "</div></div>"
            )
            self._md.append(
                f"- sample {_md(row_a['sample_id'])}: reference {_md_code(reference)}, "
                f"A {_md_code(answer_a)}, B {_md_code(answer_b)}"
            )
        self._md.append("")

    def preformatted(self, title: str, text: str) -> None:
        self._html.append(f"<details><summary>{_e(title)}</summary><pre>{_e(text)}</pre></details>")
        # The summary line is raw HTML to a Markdown reader, so it is escaped as HTML. The text is
        # fenced by more backticks than it has in a row anywhere, so no line of it ends the fence.
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
        self._md += [
            f"<details><summary>{_e(_one_line(title))}</summary>",
            "",
            fence,
            text.rstrip(),
            fence,
            "",
            "</details>",
            "",
        ]

    def _thumbnail(self, row: dict[str, str], run: Run) -> str:
        """The sample's first image, made small; only ever a file inside the dataset root."""
        images = _image_entries(row)
        if not images:
            return "<div>(no image)</div>"
        if run.dataset_format == "hf":  # no file: a cell of the run's own table
            key = (run.path, images[0])
            if key not in self._thumbnails:
                self._thumbnails[key] = _thumbnail_uri(self._table_image(run, images[0]))
            if not self._thumbnails[key]:
                return f"<div>(image {_e(images[0])} of the dataset's table: not loaded here)</div>"
            return f'<div><img alt="{_e(images[0])}" src="{self._thumbnails[key]}"></div>'
        root = run.dataset_root
        path = inside_dataset_root(images[0], root)
        if root is None or path is None:
            return "<div>(image outside the dataset root)</div>"
        if path not in self._thumbnails:
            self._thumbnails[path] = _thumbnail_uri(path)
        uri = self._thumbnails[path]
        named = root / images[0]  # as the dataset names it; ``path`` may be a link's target
        if not uri:
            return f"<div>(image not readable: {_e(str(named))})</div>"
        return f'<div><img alt="{_e(named.name)}" src="{uri}"></div>'

    def _table_image(self, run: Run, entry: str) -> bytes | None:
        """The bytes of a table cell of the split ``run`` read, if this machine can load that
        split at the revision the run read (the datasets cache it filled, say)."""
        if run.path not in self._tables:
            self._tables[run.path] = _run_table(run)
        table = self._tables[run.path]
        try:
            return table.image(entry).read() if table is not None else None
        except DatasetError:
            return None

    def html(self) -> str:
        stamp = datetime.now().isoformat(timespec="seconds")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(self.title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{_e(self.title)}</h1><p class="note">made {stamp} by runners.report</p>'
            + "\n".join(self._html)
            + f"<script>{SCRIPT}</script></body></html>\n"
        )

    def markdown(self) -> str:
        return "\n".join(self._md).rstrip() + "\n"


def inside_dataset_root(entry: str, root: Path | None) -> Path | None:
    """The file an image entry of predictions.csv names, symbolic links followed, if it lies
    inside the dataset ``root``; None for anything else, and for every entry when the run
    recorded no root.

    The runner refuses to read an image outside the root (runners/datasets/) and a report is
    made to be mailed, so a report shows no more than its run could read: an absolute path
    elsewhere, ``..`` or a link leading out gets no thumbnail. Only names and links are looked
    at here; no file is opened."""
    if root is None:
        return None
    try:
        return inside_root(root.resolve(), entry)
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL in the name
        return None


def _image_entries(row: dict[str, str]) -> list[str]:
    """The image paths a row of predictions.csv lists (a JSON list), as written."""
    try:
        images = json.loads(row.get("image_paths") or "[]")
    except json.JSONDecodeError:
        return []
    return [str(image) for image in images] if isinstance(images, list) else []


def _run_table(run: Run) -> HubTable | None:
    dataset = (run.fingerprint or {}).get("dataset", {})
    try:
        table = HubTable(HubSource.from_config(dataset.get("hf") or {}))
    except DatasetError:
        return None
    return table if table.revision == dataset.get("annotation_sha256") else None


def _thumbnail_uri(source: Path | bytes | None) -> str:
    """A small JPEG of the image (a file, or encoded bytes) as a data URI; "" when it is not a
    readable regular image file (a FIFO would block, a decompression bomb would fill the
    memory)."""
    from PIL import Image

    if source is None or (isinstance(source, Path) and not source.is_file()):
        return ""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > MAX_THUMBNAIL_SOURCE_PIXELS:
                return ""
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a smaller scale
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=75)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def shortened(text: str) -> str:
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:MAX_SHOWN_CHARS]}… ({len(text) - MAX_SHOWN_CHARS:,} more characters)"


def _diff(prediction: str, reference: str) -> tuple[str, str]:
    """Prediction and reference as HTML, what one has and the other lacks marked."""
    matcher = difflib.SequenceMatcher(None, reference, prediction, autojunk=False)
    shown_prediction, shown_reference = [], []
    for operation, r0, r1, p0, p1 in matcher.get_opcodes():
        if operation == "equal":
            shown_prediction.append(_e(prediction[p0:p1]))
            shown_reference.append(_e(reference[r0:r1]))
            continue
        if p1 > p0:
            shown_prediction.append(f"<ins>{_e(prediction[p0:p1])}</ins>")
        if r1 > r0:
            shown_reference.append(f"<del>{_e(reference[r0:r1])}</del>")
    return "".join(shown_prediction), "".join(shown_reference)


def _reference_text(encoded: str) -> str:
    """A reference as written in predictions.csv, in words: several answers joined by " | "."""
    try:
        value = json.loads(encoded)
    except (json.JSONDecodeError, TypeError):
        return encoded or ""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " | ".join(value)
    return encoded if not isinstance(value, str) else value


def _cell(column: str, value: Any, bars: Collection[str]) -> str:
    number = number_or_none(value)
    if number is None:
        return f"<td>{_e(shown(value))}</td>"
    bar = column in bars and 0 <= number <= 1
    style = f' class="n bar" style="--v:{number:.4f}"' if bar else ' class="n"'
    return f'<td{style} data-v="{number!r}">{_e(shown(number))}</td>'


def _call_time_figures(values: Sequence[float]) -> str:
    # metrics.csv's percentile, so that its call_p50_s and call_p95_s are the figures shown here.

    return (
        f"{len(values)} samples, median {percentile(values, 0.5):.4g} s, "
        f"p95 {percentile(values, 0.95):.4g} s, max {max(values):.4g} s"
    )


def shown(value: Any) -> str:
    """A value as a report shows it: numbers read from text to four significant digits."""
    if value is None:
        return ""
    if isinstance(value, str):
        number = number_or_none(value)
        if number is None or "." not in value:
            return value
        value = number
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


# What Markdown would read as markup in a value from data, a model or a config: HTML's three
# characters, backslash, code, emphasis, link, table, strikethrough and heading syntax, and an
# underscore unless a letter or digit is on both sides of it (there it is plain text, and
# column names such as exact_match stay readable).
_MD_SPECIAL = re.compile(r"[&<>\\`*\[\]|~#]|(?<![^\W_])_|_(?![^\W_])")
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _md(text: Any) -> str:
    """``text`` as Markdown that shows it as written and renders nothing from it: one line,
    HTML characters as entities, Markdown syntax backslash-escaped."""
    return _MD_SPECIAL.sub(
        lambda match: _MD_ENTITIES.get(match[0], "\\" + match[0]), _one_line(str(text))
    )


def _md_code(text: str) -> str:
    """``text`` as a Markdown code span, where nothing is rendered: a backtick would end the
    span, so it becomes a quote; an empty span would not be one, so it holds a space."""
    flat = _one_line(text).replace("`", "'")
    return f"`{flat or ' '}`"


def _one_line(text: str) -> str:
    # A line ending in a value would start a new Markdown block (a heading, raw HTML...).
    return re.sub(r"\r\n|\r|\n", " ", text)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_md(cell) for cell in cells) + " |"
