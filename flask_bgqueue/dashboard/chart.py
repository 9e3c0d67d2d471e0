"""The throughput chart as inline SVG: no script, no asset from elsewhere."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from ..inspection import Minute

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 170, 36, 22, 8


def throughput_svg(minutes: Sequence[Minute]) -> Markup:
    """Stacked bars per minute: finished (bottom) and failed (on top)."""
    if not minutes:
        return Markup("")
    peak = max(1, *(m.finished + m.failed for m in minutes))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / len(minutes)
    bar = max(1.0, step - (1 if step > 3 else 0))
    parts = [
        f'<svg class="bgq-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="finished and failed jobs per minute">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}"'
        f' y2="{TOP + plot_h}"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, m in enumerate(minutes):
        x = LEFT + i * step
        base = float(TOP + plot_h)
        title = escape(f"{m.start:%H:%M} UTC: {m.finished} finished, {m.failed} failed")
        bars = []
        for n, cls in ((m.finished, "finished"), (m.failed, "failed")):
            if n:
                h = n / peak * plot_h
                base -= h
                bars.append(
                    f'<rect class="{cls}" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}"'
                    f' height="{h:.1f}"/>'
                )
        if bars:
            parts.append(f"<g><title>{title}</title>{''.join(bars)}</g>")
    labels = [(0, minutes[0]), (len(minutes) // 2, minutes[len(minutes) // 2])]
    labels.append((len(minutes) - 1, minutes[-1]))
    for i, m in labels:
        anchor = "start" if i == 0 else "end" if i == len(minutes) - 1 else "middle"
        parts.append(
            f'<text x="{LEFT + i * step:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
            f"{m.start:%H:%M}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
