"""Importing hand-written files in the published shape (OPENAI_FORMAT.md's example, the legacy `layer`/`idx`
spelling, NaN written as null, a missing explanations file), and the bad input of import and export: each
gives one line naming the input and the fix and leaves the catalog as it was."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nxd.cli import main
from nx_dagster.storage import Catalog

TABLES = ("models", "sequences", "activation_records", "neuron_stats", "explanations", "simulations", "scores",
          "neuron_connections", "token_connections", "token_activation_summary")


def ar(tokens, acts):
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": acts}


def record(layer, neuron, legacy=False, shift=0.0):
    nid = {"dataclass_name": "NeuronId", **({"layer": layer, "idx": neuron} if legacy else
                                             {"layer_index": layer, "neuron_index": neuron})}
    return {"dataclass_name": "NeuronRecord", "neuron_id": nid,
            "random_sample": [ar([" a", " b"], [-0.02, 0.31 + shift])],
            "random_sample_by_quantile": [[ar([" q"], [0.1])], [], [], [], []],
            "quantile_boundaries": [0.11, 0.52, 1.3, 2.2], "mean": -0.03, "variance": 0.04, "skewness": None,
            "kurtosis": 18.0,
            "most_positive_activation_records": [ar([" x", "<|endoftext|>"], [3.7 + shift, 1.0]), ar([" y"], [2.5])]}


def explanation(layer, neuron):
    sim = {"dataclass_name": "SequenceSimulation", "tokens": [" x", "<|endoftext|>"], "expected_activations": [9.0, 1.0],
           "activation_scale": "simulated_normalized_activations", "distribution_values": [[], []],
           "distribution_probabilities": [[], []], "uncalibrated_simulation": None}
    sss = {"dataclass_name": "ScoredSequenceSimulation", "simulation": sim, "true_activations": [3.7, 1.0],
           "ev_correlation_score": 1.0, "rsquared_score": None, "absolute_dev_explained_score": None}
    return {"dataclass_name": "NeuronSimulationResults",
            "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": neuron},
            "scored_explanations": [{"dataclass_name": "ScoredExplanation", "explanation": "the letter x",
                                     "scored_simulation": {"dataclass_name": "ScoredSimulation",
                                                           "scored_sequence_simulations": [sss],
                                                           "ev_correlation_score": 0.42, "rsquared_score": 0.1,
                                                           "absolute_dev_explained_score": None}}]}


def dataset(root: Path, n_layer=2, n_neurons=2) -> Path:
    """A dataset root in the published layout; neuron 0/1 uses the legacy id spelling; only 0/0 has an
    explanations file; related files exist for layer 1 only."""
    for layer in range(n_layer):
        for n in range(n_neurons):
            p = root / "collated-activations" / str(layer) / f"{n}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(record(layer, n, legacy=(layer, n) == (0, 1), shift=n)))
    (root / "explanations" / "0").mkdir(parents=True)
    (root / "explanations" / "0" / "0.jsonl").write_text(json.dumps(explanation(0, 0)) + "\n")
    rel = root / "related-neurons" / "weight-based" / "1"
    rel.mkdir(parents=True)
    side = {"top_positive_neurons": ["0_1"], "top_negative_neurons": ["0_0"], "top_positive_weights": [0.5],
            "top_negative_weights": [-0.25]}
    (rel / "0.json").write_text(json.dumps({"c_fc": side, "c_proj": None}))
    tok = root / "related-tokens" / "activation-based" / "1"
    tok.mkdir(parents=True)
    (tok / "0.json").write_text(json.dumps({"dataclass_name": "TokenLookupTableSummaryOfNeuron",
                                            "tokens": [" x", " y"], "average_activations": [2.0, 1.5]}))
    return root


def counts(home):
    cat = Catalog(home)
    return {t: cat.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in TABLES}


def imp(home, url, *extra):
    return main(["import", "--home", str(home), "--quiet", *extra, str(url)])


def test_hand_written_files_import_with_legacy_ids_nulls_and_missing_files(tmp_path, capsys):
    url = dataset(tmp_path / "gpt2_small_data")
    assert imp(tmp_path / "home", url) == 0
    err = capsys.readouterr().err
    assert "explanations: 3 of 4" in err and "collated-activations" not in err.split("missing files:")[1]
    cat = Catalog(tmp_path / "home")
    assert cat.query("SELECT n_layer, n_neurons FROM models WHERE model = 'openai-gpt2-small'").to_pylist() == \
        [{"n_layer": 2, "n_neurons": 2}]
    stats = cat.query("SELECT layer, neuron, mean, skewness, kurtosis, max_activation, quantile_boundaries, source "
                      "FROM neuron_stats ORDER BY layer, neuron").to_pylist()
    assert [(s["layer"], s["neuron"]) for s in stats] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # legacy 0/1 read
    assert stats[1]["skewness"] is None and stats[1]["kurtosis"] == 18.0 and stats[1]["max_activation"] == pytest.approx(4.7)
    assert stats[1]["source"].endswith("gpt2_small_data/collated-activations/0/1.json")
    top = cat.query("SELECT r.rank, r.split, s.tokens, r.activations, s.token_ids FROM activation_records r "
                    "JOIN sequences s USING (model, corpus, sequence_id) WHERE r.layer = 0 AND r.neuron = 0 "
                    "AND r.kind = 'top' ORDER BY r.rank").to_pylist()
    assert top[0]["tokens"] == [" x", "<|endoftext|>"] and top[0]["split"] == "train" and top[1]["split"] == "calibration"
    assert top[0]["token_ids"] is None and top[0]["activations"] == pytest.approx([3.7, 1.0])
    assert cat.query("SELECT quantile, rank FROM activation_records WHERE kind = 'quantile' AND layer = 1 AND neuron = 1"
                     ).to_pylist() == [{"quantile": 0, "rank": 0}]
    s = cat.query("SELECT e.explanation, s.ev_correlation, s.rsquared, s.absolute_dev_explained, s.n_tokens "
                  "FROM explanations e JOIN scores s USING (explanation_id)").to_pylist()
    assert s == [{"explanation": "the letter x", "ev_correlation": 0.42, "rsquared": 0.1, "absolute_dev_explained": None,
                  "n_tokens": 2}]
    sim = cat.query("SELECT kind, split, expected_activations FROM simulations").to_pylist()
    assert sim == [{"kind": "top", "split": "train", "expected_activations": [9.0, 1.0]}]  # matched to top record 0
    assert cat.query("SELECT direction, sign, other_layer, other_neuron, weight FROM neuron_connections "
                     "ORDER BY sign DESC").to_pylist() == [
        {"direction": "upstream", "sign": "positive", "other_layer": 0, "other_neuron": 1, "weight": 0.5},
        {"direction": "upstream", "sign": "negative", "other_layer": 0, "other_neuron": 0, "weight": -0.25}]
    # same excerpt in many files: one sequences row; a rerun imports nothing twice
    before = counts(tmp_path / "home")
    assert before["sequences"] == 4
    assert imp(tmp_path / "home", url) == 0
    assert counts(tmp_path / "home") == before


def test_one_layer_folder(tmp_path):
    url = dataset(tmp_path / "d")
    assert imp(tmp_path / "home", url / "collated-activations" / "1", "--model", "one") == 0
    cat = Catalog(tmp_path / "home")
    assert cat.query("SELECT DISTINCT layer FROM neuron_stats").to_pylist() == [{"layer": 1}]
    assert cat.query("SELECT count(*) AS n FROM neuron_connections").to_pylist() == [{"n": 2}]


@pytest.mark.parametrize("case", ["truncated", "field", "jsonl", "wrong_id", "shape"])
def test_bad_import_changes_nothing(tmp_path, capsys, case):
    home = tmp_path / "home"
    assert imp(home, dataset(tmp_path / "ok")) == 0  # a catalog that already holds an import
    url = dataset(tmp_path / "bad", n_neurons=3 if case == "shape" else 2)
    target = url / "collated-activations" / "1" / "1.json"
    if case == "truncated":
        target.write_text(target.read_text()[:50])
    elif case == "field":
        obj = json.loads(target.read_text())
        obj["random_sample_by_quantile"] = obj["random_sample_by_quantile"][:3]
        target.write_text(json.dumps(obj))
    elif case == "jsonl":
        target = url / "explanations" / "0" / "0.jsonl"
        target.write_text(target.read_text() * 2)
    elif case == "wrong_id":
        target.write_text(json.dumps(record(1, 0)))
    capsys.readouterr()
    before = counts(home)
    assert imp(home, url) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nxd: error:") and "Fix:" in err and len(err.splitlines()) == 1
    expect = {"truncated": ("1/1.json", "not valid JSON"), "field": ("1/1.json", "random_sample_by_quantile"),
              "jsonl": ("0/0.jsonl", "exactly one"), "wrong_id": ("1/1.json", "neuron_id"),
              "shape": ("2 layers × 3 neurons", "another --model")}[case]
    assert all(e in err for e in expect), err
    assert counts(home) == before


def test_export_target_checks_and_restart(tmp_path, capsys):
    home = tmp_path / "home"
    assert imp(home, dataset(tmp_path / "d")) == 0
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "todo.txt").write_text("mine")
    assert main(["export", "--home", str(home), "--quiet", str(stray)]) == 2
    err = capsys.readouterr().err
    assert "notes" in err and "not an earlier export" in err and "Fix:" in err
    assert sorted(p.name for p in stray.iterdir()) == ["todo.txt"]
    out = tmp_path / "out"
    assert main(["export", "--home", str(home), "--quiet", "--variants", "pre_fix", str(out)]) == 0
    assert "exported 7 files (0 already complete)" in capsys.readouterr().err  # 4 records, 1 expl, 1 related, 1 tokens
    lost = out / "pre_fix" / "collated-activations" / "1" / "0.json"
    whole = lost.read_bytes()
    lost.unlink()  # as if killed before this file: only complete files have their final names
    (lost.parent / ".0123.tmp").write_bytes(whole[:20])  # a killed writer's temporary file
    assert main(["export", "--home", str(home), "--quiet", "--variants", "pre_fix", str(out)]) == 0
    assert "exported 1 files (6 already complete)" in capsys.readouterr().err
    assert lost.read_bytes() == whole
    assert not list(out.rglob(".*.tmp"))


def test_killed_import_resumes_without_duplicates(tmp_path):
    url = dataset(tmp_path / "d", n_layer=6, n_neurons=40)
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "nxd", "import", "--home", str(home), "--quiet", str(url)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(home.glob("imports/*/layer-0/committed")):
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(home.glob("imports/*/layer-*/committed")))
    assert imp(home, url) == 0
    c = counts(home)
    assert c["neuron_stats"] == 6 * 40 and c["activation_records"] == 6 * 40 * 4
    assert c["sequences"] == Catalog(home).query("SELECT count(DISTINCT sequence_id) FROM sequences").column(0)[0].as_py()
    assert done >= 1


def test_parquet_export_has_every_table_of_the_model(tmp_path, capsys):
    import pyarrow.parquet as pq

    home = tmp_path / "home"
    assert imp(home, dataset(tmp_path / "d")) == 0
    out = tmp_path / "pq"
    assert main(["export", "--home", str(home), "--quiet", "--format", "parquet", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    have = counts(home)
    for table, n in manifest["counts"].items():
        assert pq.read_table(out / f"{table}.parquet").num_rows == n == have.get(table, n)
    assert manifest["counts"]["activation_records"] == 16
    assert pq.read_table(out / "neuron_stats.parquet").column("source").null_count == 0


def test_import_over_https_with_missing_files(tmp_path, capsys):
    """A real local HTTP server (no listing used): --shape gives the layers and neurons; 404s are missing files."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = dataset(tmp_path / "site" / "gpt2_small_data")
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{root.name}"
        assert imp(tmp_path / "home", url, "--shape", "2x2") == 0
    finally:
        server.shutdown()
    assert "explanations: 3 of 4" in capsys.readouterr().err
    cat = Catalog(tmp_path / "home")
    assert cat.query("SELECT count(*) AS n FROM neuron_stats WHERE source LIKE 'http://%'").to_pylist() == [{"n": 4}]
