"""The published OpenAI layout out and in: a tiny real run exported, checked against minimal class
definitions reconstructed from OPENAI_FORMAT.md, imported back under another model and compared table by
table (every column the format carries); then a kill-and-resume, and a second import that adds nothing."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from nxd.cli import main
from nx_dagster.storage import Catalog
from tests.checkpoints import build_checkpoint

TEXT = "Paris is the capital of France. The cat sat on the mat. "


# -- minimal classes of the published format (field names and order from OPENAI_FORMAT.md) -----------------
@dataclasses.dataclass
class NeuronId:
    layer_index: int
    neuron_index: int


@dataclasses.dataclass
class ActivationRecord:
    tokens: list
    activations: list


@dataclasses.dataclass
class NeuronRecord:
    neuron_id: NeuronId
    random_sample: list
    random_sample_by_quantile: list
    quantile_boundaries: list
    mean: float
    variance: float
    skewness: float
    kurtosis: float
    most_positive_activation_records: list


@dataclasses.dataclass
class SequenceSimulation:
    tokens: list
    expected_activations: list
    activation_scale: str
    distribution_values: list
    distribution_probabilities: list
    uncalibrated_simulation: object


@dataclasses.dataclass
class ScoredSequenceSimulation:
    simulation: SequenceSimulation
    true_activations: list
    ev_correlation_score: object
    rsquared_score: object
    absolute_dev_explained_score: object


@dataclasses.dataclass
class ScoredSimulation:
    scored_sequence_simulations: list
    ev_correlation_score: object
    rsquared_score: object
    absolute_dev_explained_score: object


@dataclasses.dataclass
class ScoredExplanation:
    explanation: str
    scored_simulation: ScoredSimulation


@dataclasses.dataclass
class NeuronSimulationResults:
    neuron_id: NeuronId
    scored_explanations: list


@dataclasses.dataclass
class TokenLookupTableSummaryOfNeuron:
    tokens: list
    average_activations: list


@dataclasses.dataclass
class TokensAndWeights:
    tokens: list
    strengths: list


@dataclasses.dataclass
class WeightBasedSummaryOfNeuron:
    input_positive: TokensAndWeights
    input_negative: TokensAndWeights
    output_positive: TokensAndWeights
    output_negative: TokensAndWeights


CLASSES = {c.__name__: c for c in (NeuronId, ActivationRecord, NeuronRecord, SequenceSimulation,
                                    ScoredSequenceSimulation, ScoredSimulation, ScoredExplanation,
                                    NeuronSimulationResults, TokenLookupTableSummaryOfNeuron, TokensAndWeights,
                                    WeightBasedSummaryOfNeuron)}


def load(obj):
    """Rebuild objects the way the original loaders do: `dataclass_name` first, exactly the class's fields."""
    if isinstance(obj, list):
        return [load(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    keys = list(obj)
    assert keys[0] == "dataclass_name", keys
    cls = CLASSES[obj["dataclass_name"]]
    assert keys[1:] == [f.name for f in dataclasses.fields(cls)], (cls.__name__, keys)
    return cls(**{k: load(v) for k, v in obj.items() if k != "dataclass_name"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real run with every stage (offline explainer and simulator), exported once."""
    root = tmp_path_factory.mktemp("oa")
    ck = build_checkpoint(root / "tiny", n_layer=2, n_embd=32, n_head=4)
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}. {TEXT * 6}"}) + "\n" for i in range(3)))
    home = root / "home"
    assert main(["run", "--home", str(home), "--model", str(ck), "--corpus", str(corpus), "--seq-len", "16",
                 "--top-k", "8", "--random-k", "6", "--quantile-k", "2",
                 "--explainer", "token_lookup", "--simulator", "token_lookup"]) == 0
    out = root / "export"
    assert main(["export", "--home", str(home), "--quiet", str(out)]) == 0
    return {"root": root, "home": home, "out": out, "ck": ck, "corpus": corpus}


def files(folder: Path, sub: str):
    return sorted((folder / sub).rglob("*.json*"))


@pytest.mark.slow
def test_exported_files_parse_with_the_published_classes(run):
    out = run["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["variants"] == ["pre_fix", "post_fix"] and manifest["n_layer"] == 2
    n = manifest["n_neurons"]
    for variant in ("pre_fix", "post_fix"):
        v = out / variant
        recs = files(v, "collated-activations")
        assert len(recs) == 2 * n == manifest["counts"][variant]["records"]
        for path in recs[:: max(1, len(recs) // 20)]:
            text = path.read_text()
            assert "\n" not in text and "NaN" not in text
            r = load(json.loads(text))
            assert (r.neuron_id.layer_index, r.neuron_id.neuron_index) == (int(path.parent.name), int(path.stem))
            assert len(r.random_sample_by_quantile) == 5 and len(r.quantile_boundaries) == 4
            assert r.random_sample_by_quantile[0] and all(len(a.tokens) == len(a.activations) for a in r.random_sample)
            maxima = [max(a.activations) for a in r.most_positive_activation_records]
            assert len(maxima) == 8 and maxima == sorted(maxima, reverse=True)
        for path in files(v, "explanations")[:10]:
            lines = path.read_text().splitlines()
            assert len(lines) == 1
            res = load(json.loads(lines[0]))
            seqs = res.scored_explanations[0].scored_simulation.scored_sequence_simulations
            assert len(seqs) >= 2 and all(len(s.simulation.tokens) == len(s.true_activations) for s in seqs)
            assert seqs[0].simulation.activation_scale == "simulated_normalized_activations"
        for path in files(v, "related-neurons")[:: max(1, n // 5)]:
            obj = json.loads(path.read_text())
            assert list(obj) == ["c_fc", "c_proj"] and "dataclass_name" not in obj
            layer = int(path.parent.name)
            assert (obj["c_fc"] is None) == (layer == 0) and (obj["c_proj"] is None) == (layer == 1)
            side = obj["c_fc"] or obj["c_proj"]
            assert all(s.count("_") == 1 for s in side["top_positive_neurons"])
            if layer == 1:
                assert all(s.startswith("0_") for s in obj["c_fc"]["top_positive_neurons"])  # upstream
        for sub in ("related-tokens/activation-based", "related-tokens/weight-based"):
            for path in files(v, sub)[:5]:
                load(json.loads(path.read_text()))


def table(cat, sql, params):
    return sorted(tuple(json.dumps(v) if isinstance(v, list) else v for v in r.values())
                  for r in cat.query(sql, params).to_pylist())


@pytest.mark.slow
def test_export_import_round_trip_resume_and_compare(run, tmp_path, capsys):
    src, home = Catalog(run["home"]), tmp_path / "imported"
    model, corpus = src.query("SELECT model, corpus FROM neuron_stats LIMIT 1").to_pylist()[0].values()
    # a malformed file in layer 1 stops the import before any table changes (the error names file and field)
    bad = run["out"] / "pre_fix" / "collated-activations" / "1" / "3.json"
    good = bad.read_bytes()
    bad.write_bytes(good.replace(b'"quantile_boundaries":[', b'"quantile_boundaries":[1.0,'))
    assert main(["import", "--home", str(home), "--model", "pub", "--quiet", str(run["out"])]) == 2
    err = capsys.readouterr().err
    assert "collated-activations/1/3.json" in err and "quantile_boundaries" in err and "Fix:" in err
    assert Catalog(home).query("SELECT count(*) FROM activation_records").column(0)[0].as_py() == 0
    bad.write_bytes(good)
    assert main(["import", "--home", str(home), "--model", "pub", "--quiet", str(run["out"])]) == 0
    assert "(1 already imported)" not in capsys.readouterr().err  # parsed layer 0 was kept, nothing committed yet
    dst = Catalog(home)
    n_before = dst.query("SELECT count(*) FROM activation_records").column(0)[0].as_py()
    assert main(["import", "--home", str(home), "--model", "pub", "--quiet", str(run["out"])]) == 0
    assert "(2 already imported)" in capsys.readouterr().err
    assert dst.query("SELECT count(*) FROM activation_records").column(0)[0].as_py() == n_before

    rec = ("SELECT r.layer, r.neuron, r.kind, r.quantile, r.rank, r.split, r.max_activation, r.activations, s.tokens "
           "FROM activation_records r JOIN sequences s USING (model, corpus, sequence_id) "
           "WHERE r.model = ? AND r.corpus = ? AND r.gelu_variant = 'pre_fix'")
    assert table(src, rec, [model, corpus]) == table(dst, rec, ["pub", "openai-published"])
    assert dst.query("SELECT count(*) FROM activation_records WHERE source NOT LIKE '%/collated-activations/%'"
                     ).column(0)[0].as_py() == 0
    stats = ("SELECT layer, neuron, mean, variance, skewness, kurtosis, quantile_boundaries FROM neuron_stats "
             "WHERE model = ? AND corpus = ? AND gelu_variant = 'pre_fix'")
    assert table(src, stats, [model, corpus]) == table(dst, stats, ["pub", "openai-published"])
    expl = "SELECT layer, neuron, candidate, explanation FROM explanations WHERE model = ? AND gelu_variant = 'pre_fix'"
    assert table(src, expl, [model]) == table(dst, expl, ["pub"])
    sc = ("SELECT layer, neuron, ev_correlation, rsquared, absolute_dev_explained FROM scores "
          "WHERE model = ? AND gelu_variant = 'pre_fix' AND explanation_gelu_variant = 'pre_fix'")
    assert table(src, sc, [model]) == table(dst, sc, ["pub"])
    sims = ("SELECT m.layer, m.neuron, m.kind, m.split, q.tokens, m.expected_activations, m.true_activations "
            "FROM simulations m JOIN sequences q ON q.model = m.model AND q.sequence_id = m.sequence_id "
            "AND q.corpus = ? WHERE m.model = ? AND m.gelu_variant = 'pre_fix' AND m.split = 'valid'")
    assert table(src, sims, [corpus, model]) == table(dst, sims, ["openai-published", "pub"])
    tas = ("SELECT layer, neuron, rank, token, mean_activation FROM token_activation_summary "
           "WHERE model = ? AND gelu_variant = 'pre_fix'")
    assert table(src, tas, [model]) == table(dst, tas, ["pub"])
    for sql in ("SELECT layer, neuron, direction, sign, rank, other_layer, other_neuron, weight FROM neuron_connections WHERE model = ?",
                "SELECT layer, neuron, direction, sign, rank, token, weight FROM token_connections WHERE model = ?"):
        assert table(src, sql, [model]) and table(src, sql, [model]) == table(dst, sql, ["pub"])
    assert dst.query("SELECT count(*) FROM sequences").column(0)[0].as_py() == \
        dst.query("SELECT count(DISTINCT sequence_id) FROM sequences").column(0)[0].as_py()

    # the two documented commands: recompute the same neurons in post_fix with the checkpoint, then compare
    assert main(["run", "--home", str(home), "--model", str(run["ck"]), "--corpus", str(run["corpus"]), "--seq-len", "16",
                 "--top-k", "8", "--random-k", "6", "--quantile-k", "2", "--variants", "post_fix",
                 "--explainer", "token_lookup", "--simulator", "token_lookup"]) == 0
    rows = dst.query(COMPARE.replace("'openai-gpt2-small'", "'pub'").replace("'gpt2'", "'tiny'")).to_pylist()
    assert len(rows) == 2 * 128
    assert all(r["published_max"] is not None and r["recomputed_max"] is not None for r in rows)
    assert all(r["published_ev"] is not None for r in rows) and any(r["recomputed_ev"] is not None for r in rows)


COMPARE = """
SELECT p.layer, p.neuron, p.max_activation AS published_max, c.max_activation AS recomputed_max,
       ps.ev_correlation AS published_ev, cs.ev_correlation AS recomputed_ev
FROM neuron_stats p
JOIN neuron_stats c ON c.layer = p.layer AND c.neuron = p.neuron AND c.model = 'gpt2' AND c.gelu_variant = 'post_fix'
LEFT JOIN scores ps ON ps.model = p.model AND ps.layer = p.layer AND ps.neuron = p.neuron
     AND ps.simulator = 'openai-published'
LEFT JOIN scores cs ON cs.model = c.model AND cs.layer = c.layer AND cs.neuron = c.neuron
     AND cs.gelu_variant = 'post_fix' AND cs.explanation_gelu_variant = 'post_fix'
WHERE p.model = 'openai-gpt2-small' AND p.gelu_variant = 'pre_fix'
ORDER BY abs(c.max_activation - p.max_activation) DESC
"""
