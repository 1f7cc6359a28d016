"""Write the neuron browser: `index.html` (every neuron, sortable by layer, score and fix impact),
one page per neuron (`pages.py`), and `viewer.json` (model, snapshot, page count) into a folder.

Reads layer by layer (`reader.read_neurons`), so memory holds one layer's views at a time. Sorting
in the index is a few lines of inline JavaScript over `data-v` attributes; no file is fetched.
"""

from __future__ import annotations

import json
import logging
import time
from html import escape
from pathlib import Path

import duckdb

from nx_dagster.viewer.pages import CSS, page_path, render_neuron_page
from nx_dagster.viewer.reader import NeuronView, explanations_of, read_neurons
from nx_dagster.vocab import POST_FIX, PRE_FIX

log = logging.getLogger(__name__)
MANIFEST = "viewer.json"

# (header, how to get the value from a view); the index's sortable columns.
_COLUMNS = (
    ("layer", lambda v: v.layer),
    ("neuron", lambda v: v.neuron),
    (f"max {PRE_FIX}", lambda v: v.max_activation(PRE_FIX)),
    (f"max {POST_FIX}", lambda v: v.max_activation(POST_FIX)),
    ("fix impact", lambda v: v.fix_impact),
    (f"score {POST_FIX}", lambda v: _ev(v, POST_FIX, POST_FIX)),
    (f"score {PRE_FIX}", lambda v: _ev(v, PRE_FIX, PRE_FIX)),
    ("score cross", lambda v: _ev(v, PRE_FIX, POST_FIX)),
)

_SORT_JS = """
document.querySelectorAll('#neurons th[data-col]').forEach(th => th.addEventListener('click', () => {
  const col = +th.dataset.col, body = document.querySelector('#neurons tbody');
  const down = th.dataset.dir !== 'desc'; th.dataset.dir = down ? 'desc' : 'asc';
  const key = tr => { const v = tr.children[col].dataset.v; return v === '' ? NaN : +v; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);  // empty cells last either way
    return down ? y - x : x - y; });
  body.append(...rows);
  document.querySelectorAll('#neurons th[data-col]').forEach(h => h.classList.toggle('sorted', h === th));
}));
document.querySelector('#filter').addEventListener('input', e => {
  const q = e.target.value.toLowerCase();
  for (const tr of document.querySelector('#neurons tbody').rows)
    tr.hidden = q && !tr.textContent.toLowerCase().includes(q);
});
"""


def _ev(view: NeuronView, explained_on: str, scored_on: str) -> float | None:
    s = view.score(explained_on, scored_on)
    return None if s is None else s.ev_correlation


def _index_row(view: NeuronView) -> str:
    cells = []
    for name, get in _COLUMNS:
        value = get(view)
        shown = "—" if value is None else (str(value) if isinstance(value, int) else
                                           f"{value:+.4f}" if name == "fix impact" else f"{value:.3f}")
        if name == "neuron":
            shown = f'<a href="{page_path(view.layer, view.neuron)}">{shown}</a>'
        cells.append(f'<td data-v="{"" if value is None else value}">{shown}</td>')
    e = view.explanation(POST_FIX) or view.explanation(PRE_FIX)
    text = escape(e["explanation"]) if e and e["explanation"] else ""
    return f"<tr>{''.join(cells)}<td class=l>{text}</td></tr>"


def render_index(rows: list[str], model: str, snapshot: int) -> str:
    heads = "".join(f"<th data-col={i} title='click to sort'>{name}</th>" for i, (name, _) in enumerate(_COLUMNS))
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Neurons · {escape(model)}</title>
<style>{CSS} th[data-col]{{cursor:pointer;user-select:none}} th.sorted{{text-decoration:underline}}</style></head><body>
<h1>Neurons of {escape(model)}</h1>
<p class=meta>catalog snapshot {snapshot} · {len(rows)} neurons · click a column to sort (again to reverse);
score = ev_correlation of the explanation from the first lineage scored on the second</p>
<p><input id=filter placeholder="filter (explanation, layer…)" size=40></p>
<table id=neurons><thead><tr>{heads}<th class=l>explanation ({POST_FIX})</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<script>{_SORT_JS}</script>
</body></html>
"""


def write_site(con: duckdb.DuckDBPyConnection, folder: str | Path, model: dict, snapshot: int,
               layers: list[int] | None = None, neurons: list[int] | None = None, top_records: int = 5) -> dict:
    """Write the browser for `layers` × `neurons` (None: all) of `model` (a `models` row) into `folder`.

    Returns {"pages": count, "seconds": wall time, "folder": path}."""
    start = time.perf_counter()
    root = Path(folder)
    layers = list(range(model["n_layer"])) if layers is None else layers
    chosen = list(range(model["n_neurons"])) if neurons is None else neurons
    written = {(l, n) for l in layers for n in chosen}
    linked = explanations_of(con, model["model"], set(range(model["n_layer"])))
    rows = []
    for layer in layers:
        (root / "neurons" / str(layer)).mkdir(parents=True, exist_ok=True)
        for view in read_neurons(con, model["model"], layer, neurons, top_records=top_records):
            html = render_neuron_page(view, snapshot=snapshot, written=written, linked=linked)
            (root / page_path(view.layer, view.neuron)).write_text(html, encoding="utf-8")
            rows.append(_index_row(view))
        log.info("viewer: layer %d written (%d pages so far)", layer, len(rows))
    (root / "index.html").write_text(render_index(rows, model["model"], snapshot), encoding="utf-8")
    manifest = {"model": model["model"], "snapshot": snapshot, "pages": len(rows), "layers": layers,
                "neurons": neurons}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return {"pages": len(rows), "seconds": time.perf_counter() - start, "folder": str(root)}


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
