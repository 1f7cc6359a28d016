"""One static HTML page per neuron: heatmaps over the tokens, pre- vs post-fix side by side, the
simulation beside the truth for scored records, and links to connected neurons.

Plain HTML with inline CSS, nothing fetched at view time. Every string from the catalog (tokens,
explanations, failure reasons) goes through `html.escape`. Token spans carry their level as a class
(`h0`-`h9` for true activations, `s0`-`s9` for simulated ones, `heat.level`) and the exact value as
a tooltip. A page lives at `neurons/{layer}/{neuron}.html` under the viewer folder.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from typing import Sequence

from nx_dagster.viewer.heat import LEVELS, level, number, visible
from nx_dagster.viewer.reader import SCORE_LINES, NeuronView, Record, Score
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX

SIM_SCALE = 10.0  # simulators predict on a 0-10 scale

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{margin:.8em 0 .3em;font-size:1em}
a{color:#0645ad}.meta{color:#666}table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:right;
border-bottom:1px solid #eee}td.l,th.l{text-align:left}.pair{display:grid;grid-template-columns:1fr 1fr;gap:1.2em}
.rec{margin:.4em 0 .8em}.recmeta{color:#666;font-size:12px}.toks{font-family:ui-monospace,monospace;
font-size:12.5px;white-space:pre-wrap;word-break:break-all;line-height:1.7}.toks span{border-radius:2px}
.expl{font-size:1.05em}.null{color:#a00}.cross{color:#7a4b00}ul.links{margin:.2em 0;padding-left:1.2em}
""" + "".join(f".h{i}{{background:rgba(255,120,0,{i / (LEVELS - 1):.2f})}}" for i in range(1, LEVELS)) \
    + "".join(f".s{i}{{background:rgba(30,110,255,{i / (LEVELS - 1):.2f})}}" for i in range(1, LEVELS))


def page_path(layer: int, neuron: int) -> str:
    """The page of a neuron, relative to the viewer folder."""
    return f"neurons/{layer}/{neuron}.html"


@lru_cache(maxsize=1 << 16)
def _text(token: str) -> str:
    return escape(visible(token))


def _tokens(tokens: Sequence[str], values: Sequence[float | None], scale: float, cls: str = "h") -> str:
    """Tokens as HTML: level-0 tokens as plain text, the others as spans with a level class and the
    value as a tooltip (the hot loop of the browser: one call per token of every record shown)."""
    spans = []
    for tok, v in zip(tokens, values):
        lvl = level(v, scale)
        spans.append(f"<span class={cls}{lvl} title={v:.2f}>{_text(tok)}</span>" if lvl else _text(tok))
    return f"<div class=toks>{''.join(spans)}</div>"


def _record(r: Record, scale: float) -> str:
    return (f'<div class=rec data-seq={r.sequence_id}><div class=recmeta>#{r.rank} · sequence {r.sequence_id} · '
            f'max {r.max_activation:.3f} · {escape(r.split or "")}</div>{_tokens(r.tokens, r.activations, scale)}</div>')


def _score_cells(s: Score | None) -> str:
    if s is None:
        return "<td>—</td>" * 4 + "<td class=l></td>"
    if s.ev_correlation is None:
        return "<td class=null>NULL</td>" + "<td>—</td>" * 3 + f"<td class='l null'>{escape(s.failure_reason or '')}</td>"
    return (f"<td>{s.ev_correlation:.3f}</td><td>{number(s.ev_correlation_top)}</td>"
            f"<td>{number(s.ev_correlation_random)}</td><td>{number(s.rsquared)}</td><td class=l>{escape(s.simulator)}</td>")


def _summary(view: NeuronView) -> str:
    head = "".join(f"<th>{v}</th>" for v in GELU_VARIANTS)
    rows = "".join(
        f"<tr><th class=l>{label}</th>" + "".join(f"<td>{number(view.stats.get(v, {}).get(col))}</td>" for v in GELU_VARIANTS)
        + "</tr>" for label, col in (("max activation", "max_activation"), ("mean", "mean"), ("variance", "variance"),
                                     ("skewness", "skewness"), ("kurtosis", "kurtosis")))
    impact = view.fix_impact
    pre = view.max_activation(PRE_FIX)
    rel = f" ({impact / pre:+.1%})" if impact is not None and pre else ""
    return (f"<table id=stats><tr><th></th>{head}</tr>{rows}</table>"
            f"<p id=fix-impact>Fix impact on the maximum ({POST_FIX} − {PRE_FIX}): <b>{number(impact, '{:+.4f}')}</b>{rel}</p>")


def _explanations(view: NeuronView) -> str:
    parts = []
    for v in GELU_VARIANTS:
        e = view.explanation(v)
        if e is None:
            text = "<span class=null>no explanation</span>"
        elif e["explanation"] is None:
            text = f"<span class=null>NULL: {escape(e['failure_reason'] or '')}</span>"
        else:
            text = f"“{escape(e['explanation'])}” <span class=meta>({escape(e['explainer'] or '')})</span>"
        parts.append(f"<p class=expl data-variant={v}><b>from {v}:</b> {text}</p>")
    rows = "".join(
        f"<tr{' class=cross' if a != b else ''}><td class=l>{a}</td><td class=l>{b}{' (cross-lineage)' if a != b else ''}"
        f"</td>{_score_cells(view.score(a, b))}</tr>" for a, b in SCORE_LINES)
    return ("".join(parts) + "<table id=scores><tr><th class=l>explanation from</th><th class=l>scored on</th>"
            "<th>ev_correlation</th><th>top</th><th>random</th><th>rsquared</th><th class=l>simulator</th></tr>"
            f"{rows}</table>")


def _simulations(view: NeuronView) -> str:
    parts = []
    for s in view.scores:
        if not s.simulations:
            continue
        cross = " (cross-lineage)" if s.explanation_gelu_variant != s.gelu_variant else ""
        rows = "".join(
            f"<div class=rec data-seq={m.sequence_id}><div class=recmeta>sequence {m.sequence_id} · {escape(m.kind)} · "
            f"true</div>{_tokens(m.tokens, m.true, view.scale)}</div>"
            f"<div class=rec data-seq={m.sequence_id}><div class=recmeta>sequence {m.sequence_id} · simulated (0–10)"
            + (f" · <span class=null>{escape(m.failure_reason)}</span>" if m.failure_reason else "") + "</div>"
            + _tokens(m.tokens, m.expected or [None] * len(m.tokens), SIM_SCALE, "s") + "</div>"
            for m in s.simulations)
        parts.append(f"<h3>explanation from {s.explanation_gelu_variant}, scored on {s.gelu_variant}{cross} · "
                     f"{escape(s.simulator)} · ev_correlation {number(s.ev_correlation)}</h3><div class=pair>{rows}</div>")
    return "".join(parts) or "<p class=meta>no simulations stored</p>"


def _neuron_link(layer: int, neuron: int, written: set[tuple[int, int]]) -> str:
    label = f"{layer}/{neuron}"
    return f'<a href="../../{page_path(layer, neuron)}">{label}</a>' if (layer, neuron) in written else label


def _links(view: NeuronView, written: set[tuple[int, int]], linked: dict[tuple[int, int], str]) -> str:
    cols = []
    for direction in ("upstream", "downstream"):
        body = []
        for sign in ("positive", "negative"):
            items = "".join(
                f"<li>{_neuron_link(c['other_layer'], c['other_neuron'], written)} {c['weight']:+.4f}"
                + (f" <span class=meta>“{escape(linked[(c['other_layer'], c['other_neuron'])])}”</span>"
                   if (c["other_layer"], c["other_neuron"]) in linked else "") + "</li>"
                for c in view.neuron_links.get((direction, sign), []))
            body.append(f"<h3>{sign}</h3><ul class=links>{items or '<li>—</li>'}</ul>")
        cols.append(f"<div id={direction}><h3>{direction}</h3>{''.join(body)}</div>")
    return f"<div class=pair>{''.join(cols)}</div>"


def _token_tables(view: NeuronView) -> str:
    def cell(rows, value):
        return ", ".join(f"<code>{escape(repr(visible(t['token'])))}</code> {value(t)}" for t in rows) or "—"

    rows = [f"<tr><th class=l>fires on ({v})</th><td class=l>"
            f"{cell(view.top_tokens.get(v, []), lambda t: '%.2f ×%d' % (t['mean_activation'], t['count']))}</td></tr>"
            for v in GELU_VARIANTS]
    rows += [f"<tr><th class=l>{d} tokens, {s}</th><td class=l>"
             f"{cell(view.token_links.get((d, s), []), lambda t: '%+.3f' % t['weight'])}</td></tr>"
             for d in ("input", "output") for s in ("positive", "negative")]
    return f"<table id=tokens>{''.join(rows)}</table>"


def render_neuron_page(view: NeuronView, *, snapshot: int, written: set[tuple[int, int]],
                       linked: dict[tuple[int, int], str]) -> str:
    """The page of one neuron. `written`: the neurons that have pages (links only to those);
    `linked`: explanations of other neurons, shown beside the connections."""
    scale = view.scale
    cols = "".join(
        f"<div data-variant={v}><h3>{v}</h3>{''.join(_record(r, scale) for r in view.records.get(v, [])) or '—'}</div>"
        for v in GELU_VARIANTS)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Neuron {view.key} · {escape(view.model)}</title>
<style>{CSS}</style></head><body>
<nav><a href="../../index.html">all neurons</a></nav>
<h1>Neuron {view.key}</h1>
<p class=meta>{escape(view.model)} · catalog snapshot {snapshot} · colour scale: 0 to {scale:.3f}
(the largest activation over both lineages); hover a token for its value</p>
<h2>Activations</h2>{_summary(view)}
<h2>Explanations and scores</h2>{_explanations(view)}
<h2>Top records: pre-fix beside post-fix</h2><div class=pair id=records>{cols}</div>
<h2>Simulation beside the truth (scored records)</h2><div id=simulations>{_simulations(view)}</div>
<h2>Tokens</h2>{_token_tables(view)}
<h2>Connected neurons (weights)</h2>{_links(view, written, linked)}
</body></html>
"""
