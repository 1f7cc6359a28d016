"""The terminal card of one neuron (`nxd neuron LAYER/NEURON`): plain text lines, ANSI colours optional.

With colour, each token of a record gets a 256-colour background by its level (`heat.level`: ten
steps of the neuron's largest activation). Without colour (not a TTY, NO_COLOR, `--color never`) the
tokens at level 5 or more, i.e. above half of the maximum, are shown in [brackets].
"""

from __future__ import annotations

from nx_dagster.viewer.heat import level, number, visible
from nx_dagster.viewer.reader import SCORE_LINES, NeuronView, Record
from nx_dagster.vocab import GELU_VARIANTS, POST_FIX, PRE_FIX

# ANSI 256-colour backgrounds for levels 1-9: dark to bright orange/yellow.
_BG = (None, 236, 58, 94, 130, 166, 172, 208, 214, 226)
_PLAIN_MARK = 5
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def _score_text(s) -> str:
    if s is None:
        return "—"
    if s.ev_correlation is None:
        return f"NULL ({s.failure_reason or 'no reason stored'})"
    return (f"ev_correlation {s.ev_correlation:.3f} (top {number(s.ev_correlation_top)}, "
            f"random {number(s.ev_correlation_random)}), rsquared {number(s.rsquared)}  [{s.simulator}]")


class _Style:
    def __init__(self, color: bool):
        self.color = color

    def bold(self, text: str) -> str:
        return f"{_BOLD}{text}{_RESET}" if self.color else text

    def dim(self, text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if self.color else text

    def token(self, token: str, lvl: int) -> str:
        tok = visible(token)
        if self.color:
            if lvl == 0:
                return tok
            fg = "30" if lvl >= 5 else "97"
            return f"\x1b[{fg};48;5;{_BG[lvl]}m{tok}{_RESET}"
        return f"[{tok}]" if lvl >= _PLAIN_MARK else tok


def _record(st: _Style, r: Record, scale: float) -> list[str]:
    text = "".join(st.token(t, level(a, scale)) for t, a in zip(r.tokens, r.activations))
    best = max(range(len(r.activations)), key=lambda i: r.activations[i]) if r.activations else None
    peak = f"peak {visible(r.tokens[best])!r} at {best}" if best is not None and best < len(r.tokens) else ""
    return [st.dim(f"  #{r.rank} seq {r.sequence_id} · max {r.max_activation:.3f} · {peak} · {r.split}"), f"    {text}"]


def render_card(view: NeuronView, *, snapshot: int | None = None, variants: tuple[str, ...] = GELU_VARIANTS,
                records: int = 3, color: bool = False, linked: dict[tuple[int, int], str] | None = None) -> str:
    """The card as one string. `linked` labels connected neurons with their explanations."""
    st, out = _Style(color), []
    title = f"neuron {view.key} · {view.model}" + (f" · snapshot {snapshot}" if snapshot is not None else "")
    out += [st.bold(title), "─" * max(40, len(title))]
    if not view.stats:
        out.append("no activations recorded for this neuron (run `nxd run --stages activations`)")
    out.append(f"{'':18}" + "".join(f"{v:>12}" for v in variants))
    for label, col in (("max activation", "max_activation"), ("mean", "mean"), ("variance", "variance"),
                       ("kurtosis", "kurtosis")):
        out.append(f"{label:18}" + "".join(f"{number(view.stats.get(v, {}).get(col)):>12}" for v in variants))
    impact = view.fix_impact
    if impact is not None:
        pre = view.max_activation(PRE_FIX)
        rel = f" ({impact / pre:+.1%})" if pre else ""
        out.append(f"{'fix impact on max':18}{impact:+12.4f}{rel}   ({POST_FIX} − {PRE_FIX})")

    out += ["", st.bold("Explanations and scores")]
    for v in GELU_VARIANTS:
        e = view.explanation(v)
        text = "—" if e is None else (f"“{e['explanation']}”" if e["explanation"] is not None
                                      else f"NULL ({e['failure_reason']})")
        who = "" if e is None else f"  [{e['explainer']}{'/' + e['explainer_model'] if e['explainer_model'] else ''}]"
        out.append(f"  from {v:9} {text}{st.dim(who)}")
        for explained_on, scored_on in SCORE_LINES:
            if explained_on == v:
                cross = "  ← cross-lineage" if explained_on != scored_on else ""
                out.append(f"      scored on {scored_on:9} {_score_text(view.score(explained_on, scored_on))}{cross}")

    scale = view.scale
    legend = "colour = strength" if color else f"[token] ≥ {_PLAIN_MARK}/9 of the maximum"
    for v in variants:
        shown = view.records.get(v, [])[:records]
        out += ["", st.bold(f"Top records ({v})") + st.dim(f"  {legend}, scale {scale:.3f}")]
        out += [line for r in shown for line in _record(st, r, scale)] or ["  —"]

    out += ["", st.bold("Tokens")]
    for v in variants:
        toks = view.top_tokens.get(v, [])
        out.append(f"  fires on ({v}): " + (", ".join(
            f"{visible(t['token'])!r} {t['mean_activation']:.2f} ×{t['count']}" for t in toks) or "—"))
    for direction in ("input", "output"):
        for sign in ("positive", "negative"):
            rows = view.token_links.get((direction, sign), [])
            out.append(f"  {direction} {sign:8}: " + (", ".join(
                f"{visible(t['token'])!r} {t['weight']:+.3f}" for t in rows) or "—"))

    out += ["", st.bold("Connected neurons (weights)")]
    for direction in ("upstream", "downstream"):
        for sign in ("positive", "negative"):
            rows = view.neuron_links.get((direction, sign), [])
            out.append(f"  {direction} {sign}:" + ("" if rows else " —"))
            for c in rows:
                about = (linked or {}).get((c["other_layer"], c["other_neuron"]))
                label = f"  “{about}”" if about else ""
                out.append(f"    {c['other_layer']}/{c['other_neuron']:<5} {c['weight']:+.4f}{st.dim(label)}")
    return "\n".join(out)
