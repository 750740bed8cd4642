"""What stages show in the Prefect dashboard while they work: a progress bar and, after training, the loss
curve as a picture (the same line chart draws quality over time, flows/trend.py). Artifacts created here
attach to the running task."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes: 'demo', 'train_dpo' -> 'demo-train-dpo'."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def line_chart_svg(series: dict[str, list[tuple[float, float]]], title: str, width: int = 640,
                   height: int = 280, x_title: str = "step", x_labels: dict[float, str] | None = None,
                   dots: bool = False, y_range: tuple[float, float] | None = None) -> str:
    """A line chart as SVG text: one line per series (e.g. loss, rewards/margins over training steps).
    `x_labels`: the text under those x positions, a line per newline (default: the first and last x);
    `dots`: a circle on every point; `y_range`: the y axis's span (widened to any point outside it),
    instead of the points' own."""
    from html import escape

    colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d"]
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points) or 1
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y_range:
        y0, y1 = min(y0, y_range[0]), max(y1, y_range[1])
    if y1 == y0:
        y1 = y0 + 1
    x_labels = x_labels or {x: f"{x:g}" for x in (x0, x1)}
    lines = [text.split("\n") for text in x_labels.values()]
    legend = len(series) > 1  # only where lines need telling apart: a row under the title
    left, top = 56, 48 if legend else 32
    right, bottom = max(16, 4 * max(len(line) for text in lines for line in text)), 22 + 14 * max(map(len, lines))
    sx = lambda x: left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>']
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 6}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for x, text in zip(x_labels, lines):
        spans = "".join(f'<tspan x="{sx(x):.1f}" dy="{14 if i else 0}">{escape(line)}</tspan>'
                        for i, line in enumerate(text))
        parts.append(f'<text y="{height - bottom + 16}" text-anchor="middle">{spans}</text>')
    parts.append(f'<text x="{(width + left) / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(x_title)}</text>')
    for i, (name, values) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        if dots:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in values]
    if legend:
        names = "".join(f'<tspan dx="{12 if i else 0}" fill="{colours[i % len(colours)]}">{escape(name)}</tspan>'
                        for i, name in enumerate(series))
        parts.append(f'<text x="{left}" y="38">{names}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_markdown(svg: str, alt: str) -> str:
    """An SVG embedded as a data URI: the dashboard renders it with no file server behind it."""
    import base64

    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"


class ProgressArtifact:
    """A progress bar on the running task that follows training steps (at most one update every 2 s)."""

    def __init__(self, key: str, description: str):
        self.key, self.description = key, description
        self.id, self.shown, self.updated = None, -1.0, 0.0

    def update(self, fraction: float) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        percent = round(min(max(fraction, 0.0), 1.0) * 100, 1)
        now = time.monotonic()
        if self.id is None:
            self.id = create_progress_artifact(progress=percent, key=self.key, description=self.description)
        elif percent != self.shown and (percent >= 100 or now - self.updated >= 2.0):
            update_progress_artifact(self.id, percent)
        else:
            return
        self.shown, self.updated = percent, now


CURVES = {"loss": "training loss", "rewards/margins": "reward margin (chosen - rejected)"}


def training_curves_markdown(history: list[dict], stage: str) -> str:
    """The loss curve (and DPO's reward margin) from the trainer's log history, as an embedded picture."""
    series = {label: [(h["step"], h[name]) for h in history if name in h and "step" in h]
              for name, label in CURVES.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return ""
    charts = [svg_markdown(line_chart_svg({label: values}, f"{stage}: {label}"), label)
              for label, values in series.items()]
    last = {label: values[-1][1] for label, values in series.items()}
    summary = ", ".join(f"{label} {value:.4g}" for label, value in last.items())
    return f"### {stage}: training curves\n\nat the last step: {summary}\n\n" + "\n\n".join(charts)


@contextlib.contextmanager
def output_to(log_file: Path):
    """Send what libraries print (progress bars, per-module lines) to `log_file` instead of the console and
    the Prefect log, which keep alignflow's own lines."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield log
