"""Lineage you can trust: what a row says it came from is what it came from (corpus identity, settings in
the versions, every flag reaching the run, one history per data root, relocatable roots, checks before any
write). Checkpoints and corpora are made in the tests."""

import json
import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.definitions import defs
from assets.llm import LLMResource
from assets.resources import NxResource
from nxd.cli import main
from nx_dagster import settings
from nx_dagster.corpus import CorpusSpec
from nx_dagster.errors import NxInputError
from nx_dagster.stages.explain import load_records
from nx_dagster.storage import Catalog
from tests.checkpoints import build_checkpoint
from tests.llm_server import FakeLLMServer

TEXT = "Paris is the capital of France. The cat sat on the mat. "


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", n_layer=2, n_embd=32, n_head=4)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Every setting at its default (whatever the environment says) and no DAGSTER_HOME (Dagster's own)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)  # no dagster.yaml here: nxd must not depend on the working directory
    with settings.use(settings.from_values()):
        yield tmp_path


def jsonl(path, n_docs=4, text=TEXT * 12):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"document {i}. {text}"}) + "\n" for i in range(n_docs)))
    return path


def one(cat, sql, params=None):
    return cat.query(sql, params).column(0)[0].as_py()


# -- 1. corpus identity ----------------------------------------------------------------------------------
def test_corpus_identity_follows_content_and_cut(tmp_path):
    a = jsonl(tmp_path / "a" / "train.jsonl")
    b = jsonl(tmp_path / "b" / "train.jsonl", text=TEXT * 13)  # same name, other content
    same = tmp_path / "c" / "train.jsonl"
    same.parent.mkdir()
    shutil.copy(a, same)
    key = lambda src, n=16, m=None: CorpusSpec(str(src), n, m).name  # noqa: E731
    assert key(a).startswith("train-") and key(b).startswith("train-")
    assert key(a) != key(b)
    assert key(a) == key(same)  # content, not location
    assert key(a) != key(a, 32) and key(a) != key(a, 16, 5) and key(a, 16, 5) != key(a, 16, 6)
    glob = key(tmp_path / "a" / "*.jsonl")
    assert glob.startswith("a-") and "*" not in glob
    a.write_text(a.read_text() + json.dumps({"text": "one more document"}) + "\n")
    assert key(a) != key(same)  # an edited file is another corpus


def test_new_corpus_marks_downstream_stale_and_orphans_are_an_error(ckpt, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl")
    instance = dg.DagsterInstance.ephemeral()
    assets = list(defs().assets)
    llm = LLMResource(explainer="token_lookup", simulator="token_lookup")

    def go(nx, selection, **kw):
        assert dg.materialize(assets, selection=selection, instance=instance, resources={"nx": nx, "llm": llm},
                              **kw).success

    nx = NxResource(home=str(tmp_path / "home"), model=str(ckpt), corpus=str(corpus), seq_len=16, top_k=4,
                    random_k=3, quantile_k=1)
    go(nx, ["model", "sequences"])
    go(nx, ["post_fix/activations"], partition_key="0")
    key = dg.AssetKey(["post_fix", "activations"])
    assert get_stale_status_resolver(instance, assets).get_status(key, "0") == StaleStatus.FRESH
    first = nx.subject.corpus.name
    jsonl(corpus, text=TEXT * 9)  # the same file, new content
    nx2 = NxResource(**{**nx.model_dump(), "corpus": str(corpus)})
    assert nx2.subject.corpus.name != first
    go(nx2, ["model", "sequences"])
    assert get_stale_status_resolver(instance, assets).get_status(key, "0") == StaleStatus.STALE
    cat = Catalog(nx.home)
    assert one(cat, "SELECT count(DISTINCT corpus) FROM sequences") == 2  # the old corpus keeps its sequences
    # records whose sequences are gone are an error, never silently dropped by a join
    with cat.session() as con:
        con.execute("DELETE FROM sequences WHERE corpus = ? AND sequence_id % 2 = 0", [first])
    with pytest.raises(NxInputError, match="point at sequences that are not in the `sequences` table"):
        load_records(cat, nx.subject.name, first, "post_fix", [0], None)


# -- 2 + 3. settings and flags reach the run and its versions ----------------------------------------------
def test_recorder_settings_change_the_data_version(ckpt, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl")
    instance = dg.DagsterInstance.ephemeral()
    assets = list(defs().assets)
    llm = LLMResource(explainer="token_lookup", simulator="token_lookup")
    base = dict(home=str(tmp_path / "home"), model=str(ckpt), corpus=str(corpus), seq_len=16, quantile_k=1)
    versions = {}
    for name, extra in (("a", {"top_k": 5}), ("a_again", {"top_k": 5}), ("top_k", {"top_k": 4}),
                        ("seed", {"top_k": 4, "seed": 3}), ("random_k", {"top_k": 4, "seed": 3, "random_k": 2})):
        nx = NxResource(**base, **extra)
        res = {"nx": nx, "llm": llm}
        dg.materialize(assets, selection=["model", "sequences"], instance=instance, resources=res)
        r = dg.materialize(assets, selection=["pre_fix/activations"], partition_key="0", instance=instance,
                           resources=res)
        mat = r.asset_materializations_for_node("activations")[0]
        versions[name] = mat.tags["dagster/data_version"]
        assert mat.metadata["settings"].value["top_k"] == extra["top_k"]
        cat = Catalog(nx.home)
        assert one(cat, "SELECT max(rank) + 1 FROM activation_records WHERE kind = 'top' AND layer = 0") == extra["top_k"]
        if name == "a":
            dg.materialize(assets, selection=["pre_fix/explanations"], partition_key="0", instance=instance,
                           resources=res)
            ex = dg.AssetKey(["pre_fix", "explanations"])
            assert get_stale_status_resolver(instance, assets).get_status(ex, "0") == StaleStatus.FRESH
    assert versions["a"] == versions["a_again"]  # same settings, same version
    assert len({versions[k] for k in ("a", "top_k", "seed", "random_k")}) == 4
    assert get_stale_status_resolver(instance, assets).get_status(
        dg.AssetKey(["pre_fix", "explanations"]), "0") == StaleStatus.STALE


def test_every_cli_flag_reaches_the_run(ckpt, env, capsys):
    corpus = jsonl(env / "c.jsonl", n_docs=6)
    home = env / "home"
    ledger = env / "elsewhere" / "ledger.sqlite"
    with FakeLLMServer(api_key="k-1") as server:
        with settings.use(settings.current().replace(openai_api_key="k-1", openai_base_url=server.base_url)):
            code = main(["run", "--home", str(home), "--model", str(ckpt), "--corpus", str(corpus), "--layers", "1",
                         "--neurons", "0-2", "--variants", "post_fix", "--seq-len", "16", "--max-sequences", "20",
                         "--batch-size", "7", "--top-k", "6", "--random-k", "3", "--quantile-k", "2", "--seed", "5",
                         "--device", "cpu", "--dtype", "float32", "--stages", "activations,explanations,scores",
                         "--explainer", "token_activation_pairs", "--explainer-model", "exp-y",
                         "--simulator", "logprob_free", "--simulator-model", "sim-x", "--ledger", str(ledger)])
        assert code == 0, capsys.readouterr().err
        models = {body["model"] for _, body in server.requests}
        simulate = [body for _, body in server.requests if "logprobs" not in body and "response_format" in body]
    assert models == {"exp-y", "sim-x"}
    assert simulate  # logprob_free: structured output without logprobs
    cat = Catalog(home)
    assert cat.query("SELECT DISTINCT model, corpus FROM activation_records").to_pylist() == [
        {"model": "tiny", "corpus": CorpusSpec(str(corpus), 16, 20).name}]
    assert one(cat, "SELECT count(*) FROM sequences") == 20
    assert one(cat, "SELECT max(len(token_ids)) FROM sequences") == 16
    assert cat.query("SELECT DISTINCT kind, rank FROM activation_records WHERE kind = 'top' ORDER BY rank"
                     ).num_rows == 6
    assert one(cat, "SELECT max(rank) + 1 FROM activation_records WHERE kind = 'random'") == 3
    assert one(cat, "SELECT max(rank) + 1 FROM activation_records WHERE kind = 'quantile'") <= 2
    assert one(cat, "SELECT count(DISTINCT neuron) FROM neuron_stats") == 3
    assert cat.query("SELECT DISTINCT explainer, explainer_model FROM explanations").to_pylist() == [
        {"explainer": "token_activation_pairs", "explainer_model": "exp-y"}]
    assert cat.query("SELECT DISTINCT simulator, simulator_model FROM scores").to_pylist() == [
        {"simulator": "logprob_free", "simulator_model": "sim-x"}]
    assert ledger.exists() and not (home / "llm_ledger.sqlite").exists()
    with dg.DagsterInstance.from_ref(__import__("dagster._core.instance.ref", fromlist=["InstanceRef"]
                                                ).InstanceRef.from_dir(str(home / ".dagster"))) as instance:
        mats = instance.fetch_materializations(dg.AssetKey(["post_fix", "activations"]), limit=1).records
        meta = mats[0].asset_materialization.metadata
    assert meta["settings"].value == {**meta["settings"].value, "top_k": 6, "random_k": 3, "quantile_k": 2,
                                      "seed": 5, "dtype": "float32", "device": "cpu", "neurons": "0-2"}
    assert meta["batch_size"].value == 7 and meta["data_root"].value == str(home)


# -- 4. one data root, one history ---------------------------------------------------------------------------
def test_each_data_root_has_its_own_history(ckpt, env, capsys):
    corpus = jsonl(env / "c.jsonl")
    args = ["--model", str(ckpt), "--corpus", str(corpus), "--seq-len", "16", "--stages", "activations",
            "--variants", "post_fix", "--layers", "0"]
    assert main(["run", "--home", str(env / "A"), *args]) == 0
    assert main(["run", "--home", str(env / "B"), *args, "--max-sequences", "5"]) == 0
    from dagster._core.instance.ref import InstanceRef

    for root, n_seq in (("A", None), ("B", 5)):
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(env / root / ".dagster"))) as instance:
            assert len(instance.get_runs()) == 2  # model+sequences, activations: nothing of the other root
            mat = instance.fetch_materializations(dg.AssetKey("sequences"), limit=1).records[0].asset_materialization
            assert mat.metadata["data_root"].value == str(env / root)
            assert mat.metadata["corpus"].value == CorpusSpec(str(corpus), 16, n_seq).name
    # an instance claimed by root A refuses to hold root B's history, before any table changes
    os.environ["DAGSTER_HOME"] = str(env / "A" / ".dagster")
    try:
        capsys.readouterr()
        assert main(["run", "--home", str(env / "C"), *args]) == 2
    finally:
        del os.environ["DAGSTER_HOME"]
    err = capsys.readouterr().err
    assert "holds the run history of another data root" in err and "Fix:" in err
    assert not (env / "C" / "catalog.sqlite").exists()


# -- 5. a data root can move ------------------------------------------------------------------------------
def test_moved_and_copied_roots_answer_and_write(ckpt, env, capsys):
    corpus = jsonl(env / "c.jsonl")
    args = ["--model", str(ckpt), "--corpus", str(corpus), "--seq-len", "16", "--stages", "activations",
            "--variants", "post_fix"]
    assert main(["run", "--home", str(env / "home"), *args, "--layers", "0"]) == 0
    count = "SELECT count(*) AS n FROM activation_records"
    assert main(["sql", "--home", str(env / "home"), "--format", "json", count]) == 0
    n = json.loads(capsys.readouterr().out)[0]["n"]
    assert n > 0
    shutil.move(env / "home", env / "moved")
    assert main(["sql", "--home", str(env / "moved"), "--format", "json", count]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == n
    shutil.copytree(env / "moved", env / "copy")
    assert main(["run", "--home", str(env / "copy"), *args, "--layers", "1"]) == 0  # writes into the copy only
    assert main(["sql", "--home", str(env / "copy"), "--format", "json",
                 "SELECT count(*) FILTER (layer = 0) AS l0, count(*) FILTER (layer = 1) AS l1 FROM activation_records"]) == 0
    copied = json.loads(capsys.readouterr().out)[0]
    assert copied["l0"] == n and copied["l1"] > 0
    assert main(["sql", "--home", str(env / "moved"), "--format", "json", count]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == n  # the original is untouched
    # a read-only mount of the root still answers (a bind mount needs root and a kernel that allows it)
    ro = env / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(env / "moved"), str(ro)], capture_output=True).returncode:
        pytest.skip("read-only bind mount not permitted here")
    try:
        probe = subprocess.run([sys.executable, "-m", "nxd", "sql", "--home", str(ro), "--format", "json",
                                count], capture_output=True, text=True, cwd=os.getcwd(),
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout)[0]["n"] == n
    finally:
        subprocess.run(["umount", str(ro)], check=False)


# -- 8. checks before any write ---------------------------------------------------------------------------
def _untouched(home):
    return not (home / "catalog.sqlite").exists() or all(
        one(Catalog(home), f"SELECT count(*) FROM {t}") == 0 for t in ("models", "sequences"))


def test_malformed_line_deep_in_the_corpus_stops_before_any_write(ckpt, env, capsys):
    corpus = jsonl(env / "c.jsonl", n_docs=300)
    with open(corpus, "a") as fh:
        fh.write('{"text": "an unterminated string\n')
    home = env / "home"
    code = main(["run", "--home", str(home), "--model", str(ckpt), "--corpus", str(corpus), "--seq-len", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "line 301" in err and "Fix:" in err and "Traceback" not in err
    assert _untouched(home)


def test_missing_cuda_is_one_line_before_any_write(ckpt, env, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    home = env / "home"
    code = main(["run", "--home", str(home), "--model", str(ckpt), "--corpus", str(jsonl(env / "c.jsonl")),
                 "--seq-len", "16", "--device", "cuda"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("nxd: error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("nxd: error: device 'cuda'") and "Fix:" in errors[0]
    assert "Traceback" not in err
    assert _untouched(home)


def test_input_error_inside_a_run_is_one_line(ckpt, env, capsys):
    code = main(["run", "--home", str(env / "home"), "--model", str(ckpt), "--corpus", str(jsonl(env / "c.jsonl")),
                 "--seq-len", "16", "--stages", "explanations"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("nxd: error:")]
    assert code == 2 and len(lines) == 1 and "Stack Trace" not in err and "Traceback" not in err
    assert "do not exist yet" in lines[0] and "Fix: materialize the activations stage" in lines[0]


def test_a_catalog_from_an_earlier_version_gains_the_new_columns(tmp_path):
    cat = Catalog(tmp_path / "home")
    with cat.session() as con:  # simulate a data root written before `failure_reason` existed
        con.execute("ALTER TABLE scores DROP COLUMN failure_reason")
        con.execute("INSERT INTO scores (explanation_id, layer) VALUES ('x1', 0)")
    assert cat.query("SELECT explanation_id, failure_reason FROM scores").to_pylist() == [
        {"explanation_id": "x1", "failure_reason": None}]
