"""`nxd neuron` (the terminal card) and `nxd viewer` (the static neuron browser) on the bundled main
job's catalog. The browser is opened in a real headless Chromium (Playwright driving the system's
`chromium`, NX_CHROMIUM overrides the path) that may reach nothing but the local server; screenshots
go to the test's tmp dir and to <repo>/screenshots/."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.request import urlopen

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from nxd.cli import main
from nx_dagster.storage import Catalog
from nx_dagster.viewer.heat import visible
from nx_dagster.viewer.pages import page_path, render_neuron_page
from nx_dagster.viewer.reader import NeuronView, Record
from nx_dagster.viewer.serve import make_server

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NX_CHROMIUM", "/usr/bin/chromium")
NEURON = (2, 17)


@pytest.fixture(scope="module")
def home(bundled_run):
    return bundled_run / "nx_data"


@pytest.fixture(scope="module")
def con(home):
    with Catalog(home).session(read_only=True) as c:
        yield c


def one(con, sql, params=()):
    rows = con.execute(sql, list(params)).fetch_arrow_table().to_pylist()
    assert rows, sql
    return rows[0]


def card(capsys, *args) -> tuple[int, str, str]:
    rc = main(["neuron", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_card_shows_records_explanations_scores_and_connections(home, con, capsys):
    layer, neuron = NEURON
    rc, out, _ = card(capsys, f"{layer}/{neuron}", "--home", str(home), "--color", "never")
    assert rc == 0
    assert "\x1b[" not in out
    key = "model = 'nx-tiny-gpt2' AND layer = ? AND neuron = ?"
    for variant in ("pre_fix", "post_fix"):
        stats = one(con, f"SELECT max_activation FROM neuron_stats WHERE {key} AND gelu_variant = ?", (layer, neuron, variant))
        assert f"{stats['max_activation']:.3f}" in out
        expl = one(con, f"SELECT explanation FROM explanations WHERE {key} AND gelu_variant = ?", (layer, neuron, variant))
        assert f"from {variant:9} “{expl['explanation']}”" in out
    impact = one(con, f"SELECT max(max_activation) FILTER (gelu_variant = 'post_fix') - "
                       f"max(max_activation) FILTER (gelu_variant = 'pre_fix') AS d FROM neuron_stats WHERE {key}",
                 (layer, neuron))["d"]
    assert f"{impact:+.4f}" in next(ln for ln in out.splitlines() if ln.startswith("fix impact on max"))
    part = out.split("Explanations and scores")[1].split("Top records")[0]
    sections = dict(re.findall(r"from (\w+) .*\n((?: +scored on .*\n?)+)", part))
    for explained, scored in (("pre_fix", "pre_fix"), ("post_fix", "post_fix"), ("pre_fix", "post_fix")):
        s = one(con, f"SELECT ev_correlation FROM scores WHERE {key} AND explanation_gelu_variant = ? "
                      "AND gelu_variant = ?", (layer, neuron, explained, scored))
        line = next(ln for ln in sections[explained].splitlines() if f"scored on {scored} " in ln)
        assert f"ev_correlation {s['ev_correlation']:.3f}" in line
        assert ("cross-lineage" in line) == (explained != scored)
    top = one(con, f"""SELECT r.sequence_id, r.activations, s.tokens FROM activation_records r JOIN sequences s
                       USING (model, corpus, sequence_id) WHERE r.model = 'nx-tiny-gpt2' AND r.layer = ? AND r.neuron = ?
                       AND r.gelu_variant = 'post_fix' AND r.kind = 'top' AND r.rank = 0""", (layer, neuron))
    peak = max(range(len(top["activations"])), key=lambda i: top["activations"][i])
    assert f"#0 seq {top['sequence_id']}" in out
    assert f"[{visible(top['tokens'][peak])}]" in out  # the firing token is marked
    up = one(con, f"SELECT other_layer, other_neuron, weight FROM neuron_connections WHERE {key} "
                   "AND direction = 'upstream' AND sign = 'positive' AND rank = 0", (layer, neuron))
    assert f"{up['other_layer']}/{up['other_neuron']:<5} {up['weight']:+.4f}" in out
    tok = one(con, f"SELECT token, weight FROM token_connections WHERE {key} AND direction = 'input' "
                    "AND sign = 'positive' AND rank = 0", (layer, neuron))
    assert f"{visible(tok['token'])!r} {tok['weight']:+.3f}" in out


def test_card_in_colour_and_one_lineage(home, capsys, monkeypatch):
    rc, out, _ = card(capsys, "2/17", "--home", str(home), "--color", "always", "--variant", "post_fix")
    assert rc == 0
    assert "\x1b[30;48;5;226m" in out  # the strongest token of the neuron is drawn at level 9
    assert "Top records (post_fix)" in out and "Top records (pre_fix)" not in out
    monkeypatch.setenv("NO_COLOR", "1")
    rc, out, _ = card(capsys, "2/17", "--home", str(home))
    assert rc == 0 and "\x1b[" not in out


def test_card_as_of_an_earlier_snapshot(home, con, capsys):
    first = one(con, "SELECT min(snapshot_id) AS s FROM nx.snapshots() WHERE commit_message LIKE 'explanations%'")["s"]
    rc, out, _ = card(capsys, "2/17", "--home", str(home), "--color", "never", "--snapshot", str(first - 1))
    assert rc == 0 and f"snapshot {first - 1}" in out
    assert re.search(r"from post_fix +—", out) and "ev_correlation" not in out  # not explained yet then
    assert "max activation" in out and "#0 seq" in out


@pytest.mark.parametrize("args, words", [
    (["9/3"], "is outside nx-tiny-gpt2"),
    (["2-17"], "is not LAYER/NEURON"),
    (["2/17", "--snapshot", "99999"], "does not exist"),
    (["2/17", "--variant", "mid_fix"], "mid_fix"),
])
def test_card_bad_input(home, capsys, args, words):
    rc, out, err = card(capsys, *args, "--home", str(home))
    assert rc == 2 and out == ""
    assert err.startswith("nxd: error:") and words in err and "Fix:" in err


@pytest.fixture(scope="module")
def site(home, con, tmp_path_factory):
    """A part of the browser: layers 2-3, neurons 0-15, 17 and 2/17's strongest downstream neuron."""
    down = one(con, "SELECT other_neuron FROM neuron_connections WHERE layer = 2 AND neuron = 17 AND other_layer = 3 "
                     "AND direction = 'downstream' AND sign = 'positive' ORDER BY rank LIMIT 1")["other_neuron"]
    folder = tmp_path_factory.mktemp("viewer")
    assert main(["viewer", "--home", str(home), "--layers", "2-3", "--neurons", f"0-15,17,{down}", str(folder)]) == 0
    return folder, down


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (or set NX_CHROMIUM)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _escape_page(folder: Path) -> str:
    """A page rendered from tokens and an explanation that are markup, to prove they stay text."""
    tokens = ["<b>bold</b>", " &amp;", ' "q"', "line\n", "</div><script>window.pwned=1</script>"]
    acts = [3.0, 1.5, 0.0, 2.0, 1.0]
    view = NeuronView("m<x>", 0, 1, stats={"post_fix": {"max_activation": 3.0}},
                      records={"post_fix": [Record("top", 0, "train", 7, 3.0, tokens, acts)]},
                      explanations=[{"gelu_variant": "post_fix", "explanation": "<img src=x onerror=window.pwned=2>",
                                     "explainer": "test", "failure_reason": None}])
    path = folder / "escape.html"
    path.write_text(render_neuron_page(view, snapshot=1, written=set(), linked={}), encoding="utf-8")
    return "".join(visible(t) for t in tokens)


def test_browser_pages_in_chromium(con, site, browser, tmp_path):
    folder, down = site
    manifest = json.loads((folder / "viewer.json").read_text())
    assert manifest["pages"] == 2 * 18 and manifest["snapshot"] >= 23
    expected_text = _escape_page(folder)
    server = make_server(folder, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    foreign = []

    def only_local(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    shots = []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", only_local)

        page.goto(f"{base}/index.html")
        rows = page.locator("#neurons tbody tr")
        assert rows.count() == 36
        values = lambda col: page.eval_on_selector_all(  # noqa: E731
            "#neurons tbody tr", f"rs => rs.map(r => r.children[{col}].dataset.v)")
        score = [float(v) for v in values(5) if v]
        nulls = [v for v in values(5) if not v]  # a NULL score (failure_reason) sorts last either way
        assert len(score) >= 30 and len(score) + len(nulls) == 36
        page.click("th:has-text('score post_fix')")
        assert [float(v) for v in values(5) if v] == sorted(score, reverse=True) and values(5)[len(score):] == nulls
        page.click("th:has-text('score post_fix')")
        assert [float(v) for v in values(5) if v] == sorted(score) and values(5)[len(score):] == nulls
        page.click("th:has-text('fix impact')")
        impact = [float(v) for v in values(4)]
        assert impact == sorted(impact, reverse=True)
        page.click("th:has-text('layer')")
        assert [int(v) for v in values(0)] == sorted((int(v) for v in values(0)), reverse=True)
        page.fill("#filter", "zzz-no-such-text")
        assert page.locator("#neurons tbody tr:visible").count() == 0
        page.fill("#filter", "")
        page.screenshot(path=str(tmp_path / "index.png"))
        shots.append("index.png")

        page.click("#neurons a[href='neurons/2/17.html']")
        assert page.locator("h1").inner_text() == "Neuron 2/17"
        stats = con.execute("SELECT gelu_variant, max_activation FROM neuron_stats WHERE layer = 2 "
                            "AND neuron = 17 ORDER BY gelu_variant DESC").fetch_arrow_table().to_pylist()
        row = page.locator("#stats tr", has_text="max activation").inner_text()
        assert row.split()[-2:] == [f"{r['max_activation']:.3f}" for r in stats]
        assert page.locator("#records > div").count() == 2  # pre_fix beside post_fix
        assert page.locator("#records [data-variant=post_fix] .rec").count() == 5
        assert page.locator("#records .h9").count() >= 1  # the neuron's strongest token, full colour
        n_valid = one(con, "SELECT count(*) AS n FROM simulations WHERE layer = 2 AND neuron = 17 "
                           "AND split = 'valid'")["n"]
        assert n_valid > 0 and page.locator("#simulations .rec").count() == 2 * n_valid  # truth beside simulation
        assert page.locator("#simulations .s1, #simulations .s5, #simulations .s9").count() > 0
        assert "cross-lineage" in page.locator("#scores").inner_text()
        page.screenshot(path=str(tmp_path / "neuron_2_17.png"), full_page=True)
        shots.append("neuron_2_17.png")

        page.click(f"#downstream a[href='../../{page_path(3, down)}']")
        assert page.locator("h1").inner_text() == f"Neuron 3/{down}"
        page.click("nav a")
        assert page.locator("h1").inner_text().startswith("Neurons of")

        page.goto(f"{base}/escape.html")
        assert page.evaluate("window.pwned") is None
        toks = page.locator("#records [data-variant=post_fix] .toks")
        assert toks.inner_text() == expected_text
        assert toks.locator("b, script").count() == 0 and page.locator("img").count() == 0
        assert page.locator(".expl[data-variant=post_fix]").inner_text().count("<img src=x") == 1
        page.screenshot(path=str(tmp_path / "escape.png"))
        shots.append("escape.png")
    finally:
        server.shutdown()
        server.server_close()
    assert foreign == []
    (REPO / "screenshots").mkdir(exist_ok=True)
    for name in shots:
        assert (tmp_path / name).stat().st_size > 10_000
        shutil.copy(tmp_path / name, REPO / "screenshots" / name)


def _serve(home, folder, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "nxd", "viewer", "--serve", "--port", "0", "--home",
                             str(home), "--layers", "3", "--neurons", "0-3", *extra, str(folder)],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"serving .* on (http://\S+/)", line)
        if m:
            return proc, m.group(1), lines
    proc.wait()
    pytest.fail("nxd viewer --serve did not start:\n" + "".join(lines))


def test_viewer_serve_writes_then_reuses(home, tmp_path):
    for attempt in ("write", "reuse"):
        proc, url, lines = _serve(home, tmp_path / "v")
        try:
            assert ("not rewritten" in "".join(lines)) == (attempt == "reuse")
            with urlopen(url + "index.html", timeout=30) as r:
                assert r.status == 200 and b"Neurons of nx-tiny-gpt2" in r.read()
            with urlopen(url + page_path(3, 2), timeout=30) as r:
                assert b"<h1>Neuron 3/2</h1>" in r.read()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_dagster_metadata_links_to_neuron_pages(bundled_run, home, tmp_path):
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(bundled_run)))
    event = instance.get_latest_materialization_event(dg.AssetKey(["post_fix", "activations"]))
    table = event.asset_materialization.metadata["strongest_neurons"].value
    links = re.findall(r"\[(\d+)/(\d+)\]\(http://127\.0\.0\.1:8765/(neurons/\d+/\d+\.html)\)", table)
    assert len(links) == 10
    layer, neuron, path = links[0]
    assert path == page_path(int(layer), int(neuron))
    assert main(["viewer", "--home", str(home), "--layers", layer, "--neurons", neuron, str(tmp_path)]) == 0
    assert f"<h1>Neuron {layer}/{neuron}</h1>" in (tmp_path / path).read_text()
