"""Releases: immutable, incremental, named, queryable forever (issue 8 §2). Real catalog, real Dagster instance
of the data root; the model and corpus are built here."""

import json

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from assets.activations import ACTIVATIONS_VERSION
from assets.runtime.instance import open_instance
from nxd.cli import main
from nx_dagster import settings
from nx_dagster.errors import NxInputError
from nx_dagster.storage import Catalog
from nx_dagster.storage import release_content
from nx_dagster.storage.releases import create_release, expire_snapshots, read_release, release_snapshot
from tests.checkpoints import build_checkpoint

TEXT = "Paris is the capital of France. The cat sat on the mat. "
LAYER_TABLES = {"activation_records", "neuron_stats", "token_activation_summary"}


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Every setting at its default (whatever the environment says) and no DAGSTER_HOME (Dagster's own)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    with settings.use(settings.from_values()):
        yield tmp_path


def state(cat: Catalog) -> tuple:
    """Everything a refused command must leave as it was: snapshots, releases, files on disk."""
    with cat.session(read_only=True) as con:
        snaps = con.execute("SELECT max(snapshot_id), count(*) FROM nx.snapshots()").fetchone()
        rels = con.execute("SELECT release, snapshot, manifest FROM releases ORDER BY release").fetchall()
    return snaps, rels, sorted(p.name for p in cat.data_path.rglob("*.parquet"))


def sql(home, capsys, query, release=None):
    capsys.readouterr()
    assert main(["sql", "--home", str(home), "--format", "json", *(["--release", release] if release else []), query]) == 0
    return json.loads(capsys.readouterr().out)


def files_of(cat: Catalog, name: str) -> dict[str, str]:
    """path -> table of every file release `name` references, listed from DuckLake at its snapshot."""
    snap = release_snapshot(cat, name)
    with cat.session(read_only=True) as con:
        out = {}
        for t in read_release(cat, name)["manifest"]["tables"]:
            out.update({f["path"]: t for f in release_content.files(con, t, snap, cat.data_path)})
        return out


@pytest.mark.slow
def test_release_change_one_layer_release_again(env, capsys):
    ckpt = build_checkpoint(env / "ck", n_layer=2, n_embd=32, n_head=4)
    corpus = env / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}. {TEXT * 12}"}) + "\n" for i in range(4)))
    home = env / "home"
    args = ["--home", str(home), "--model", str(ckpt), "--corpus", str(corpus), "--seq-len", "16", "--top-k", "4",
            "--random-k", "3", "--quantile-k", "1", "--explainer", "token_lookup", "--simulator", "token_lookup"]
    assert main(["run", *args]) == 0
    assert main(["release", "r1", "--home", str(home), "--message", "first"]) == 0
    assert "release r1: snapshot" in capsys.readouterr().out
    cat = Catalog(home)
    r1 = read_release(cat, "r1")
    m1 = r1["manifest"]
    assert r1["parent_release"] is None and m1["message"] == "first" and m1["totals"]["new_files"] == m1["totals"]["files"]
    sha = cat.query("SELECT checkpoint_sha256 FROM models").column(0)[0].as_py()
    acts = m1["tables"]["activation_records"]
    assert acts["checkpoint_sha256"] == {cat.query("SELECT model FROM models").column(0)[0].as_py(): sha}
    assert acts["gelu_variants"] == ["post_fix", "pre_fix"]
    assert acts["code_versions"] == {"pre_fix/activations": ACTIVATIONS_VERSION, "post_fix/activations": ACTIVATIONS_VERSION}
    assert all(e["rows"] > 0 for t, e in m1["tables"].items() if t != "llm_calls")
    assert m1["changelog"]["neurons_changed"] == 2 * 2 * 128  # every neuron's best explanation is new in r1

    # one layer changes: post_fix layer 1 re-recorded with another setting (top_k 4 -> 3), the README's way
    again = [a if a != "4" else "3" for a in args]
    assert main(["run", *again, "--stages", "activations", "--variants", "post_fix", "--layers", "1"]) == 0
    assert main(["release", "r2", "--home", str(home)]) == 0
    m2 = read_release(cat, "r2")["manifest"]
    assert m2["parent_release"] == "r1"
    # the changelog names exactly that layer's rows: the rank-3 top records of post_fix layer 1, nothing else
    changes = {t: c for t, c in m2["changelog"]["tables"].items() if any(c.values())}
    assert changes == {"activation_records": {"added": 0, "changed": 0, "removed": 128}}
    assert m2["changelog"]["neurons_changed"] == 0
    assert {t: e["checksum"] for t, e in m2["tables"].items() if t != "activation_records"} == {
        t: e["checksum"] for t, e in m1["tables"].items() if t != "activation_records"}
    # r1 and r2 each answer SQL with their own data
    top = "SELECT count(*) AS n FROM activation_records WHERE kind = 'top' AND gelu_variant = 'post_fix' AND layer = {}"
    assert sql(home, capsys, top.format(1), "r1") == [{"n": 4 * 128}]
    assert sql(home, capsys, top.format(1), "r2") == [{"n": 3 * 128}]
    assert sql(home, capsys, top.format(0), "r2") == [{"n": 4 * 128}]
    # r2 references new files for that layer only; every other file is shared with r1
    f1, f2 = files_of(cat, "r1"), files_of(cat, "r2")
    new = {p: t for p, t in f2.items() if p not in f1}
    assert new and set(new.values()) <= LAYER_TABLES
    assert m2["totals"]["new_files"] == len(new) and m2["totals"]["files"] == len(f2)
    new_data = [str(cat.data_path / p) for p in new if "delete" not in p]
    assert duckdb.sql(f"SELECT DISTINCT gelu_variant, layer FROM read_parquet({new_data}, union_by_name => true)"
                      ).fetchall() == [("post_fix", 1)]
    print(f"\nrelease sizes: r1 {m1['totals']['files']} files {m1['totals']['bytes']} B; "
          f"r2 adds {m2['totals']['new_files']} files {m2['totals']['new_bytes']} B of {m2['totals']['bytes']} B")

    # a used name and an unknown name: one clear line each, the catalog as it was
    before = state(cat)
    capsys.readouterr()
    assert main(["release", "r1", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "release name 'r1': is already taken (existing releases: r1, r2)" in err and "Fix:" in err
    assert main(["sql", "--home", str(home), "--release", "r9", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "release 'r9': does not exist (existing releases: r1, r2)" in err and "Fix:" in err
    assert state(cat) == before

    # the UI: each release is a materialization of `release` with its manifest and changelog
    with open_instance(cat) as instance:
        mats = instance.fetch_materializations(dg.AssetKey("release"), limit=5).records
        assert [r.asset_materialization.metadata["release"].value for r in mats] == ["r2", "r1"]
        meta = mats[0].asset_materialization.metadata
        assert "| activation_records |" in meta["tables"].value and meta["new_files"].value == len(new)

    # compaction and expiry keep what releases need; checksums do not depend on the file layout
    with cat.session() as con:
        con.execute("CALL ducklake_merge_adjacent_files('nx')")
    expired = expire_snapshots(cat)
    assert expired and not {release_snapshot(cat, "r1"), release_snapshot(cat, "r2")} & set(expired)
    assert sql(home, capsys, top.format(1), "r1") == [{"n": 4 * 128}]
    create_release(cat, "r3")
    m3 = read_release(cat, "r3")["manifest"]
    assert {t: e["checksum"] for t, e in m3["tables"].items()} == {t: e["checksum"] for t, e in m2["tables"].items()}
    assert not any(any(c.values()) for c in m3["changelog"]["tables"].values())


def _explained(cat: Catalog, scores: list[float], texts: list[str]) -> None:
    n = len(scores)
    ids = [f"x{i}" for i in range(n)]
    cat.replace_many([
        ("explanations", pa.table({"explanation_id": ids, "model": ["m"] * n, "gelu_variant": ["post_fix"] * n,
                                   "layer": pa.array([0] * n, pa.int32()), "neuron": pa.array(range(n), pa.int32()),
                                   "explanation": texts}), {"model": "m"}),
        ("scores", pa.table({"explanation_id": ids, "model": ["m"] * n, "layer": pa.array([0] * n, pa.int32()),
                             "neuron": pa.array(range(n), pa.int32()), "explanation_gelu_variant": ["post_fix"] * n,
                             "gelu_variant": ["post_fix"] * n, "simulator": ["s"] * n, "ev_correlation": scores}),
         {"model": "m"})])


def test_neuron_changes_name_old_and_new_values(tmp_path):
    cat = Catalog(tmp_path / "home")
    _explained(cat, [0.5, 0.2, 0.1], ["cats", "dogs", "birds"])
    create_release(cat, "a")
    _explained(cat, [0.5, 0.4, 0.1], ["cats", "dogs", "fish"])
    b = create_release(cat, "b")
    rows = cat.query("SELECT neuron, change, old_explanation, old_score, new_explanation, new_score "
                     "FROM release_neuron_changes WHERE release = 'b' ORDER BY neuron").to_pylist()
    assert rows == [
        {"neuron": 1, "change": "score", "old_explanation": "dogs", "old_score": 0.2, "new_explanation": "dogs", "new_score": 0.4},
        {"neuron": 2, "change": "explanation", "old_explanation": "birds", "old_score": 0.1, "new_explanation": "fish",
         "new_score": 0.1}]
    assert b["manifest"]["changelog"]["neurons_changed"] == 2
    assert b["manifest"]["changelog"]["tables"]["scores"] == {"added": 0, "changed": 1, "removed": 0}
    assert b["manifest"]["changelog"]["tables"]["explanations"] == {"added": 0, "changed": 1, "removed": 0}


def test_failed_or_refused_release_leaves_nothing(tmp_path, monkeypatch):
    cat = Catalog(tmp_path / "home")
    _explained(cat, [0.5], ["cats"])
    before = state(cat)
    for bad in ("", "has space", "../up", "x" * 65):
        with pytest.raises(NxInputError, match="is not a valid name"):
            create_release(cat, bad)
    assert state(cat) == before
    # a failure inside the release transaction rolls everything back
    monkeypatch.setattr(release_content, "neuron_changes_sql", 
                        lambda *a: "SELECT error('disk on fire'), " + ", ".join(["NULL"] * 10))
    with pytest.raises(duckdb.Error, match="disk on fire"):
        create_release(cat, "r1")
    assert state(cat) == before
    with pytest.raises(NxInputError, match="does not exist \\(no release exists yet\\)"):
        release_snapshot(cat, "r1")
    monkeypatch.undo()
    create_release(cat, "r1")  # the name was never taken
    assert [r[0] for r in state(cat)[1]] == ["r1"]


def test_rewriting_unchanged_rows_adds_no_snapshot(tmp_path):
    cat = Catalog(tmp_path / "home")
    rows = lambda n, t: pa.table({"model": ["m"] * n, "n_layer": pa.array([2] * n, pa.int32()),  # noqa: E731
                                  "created_at": pa.array([t] * n, pa.timestamp("us", tz="UTC"))})
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    first = cat.replace_if_changed("models", rows(1, now), {"model": "m"}, ignore=("created_at",))
    later = now + dt.timedelta(hours=1)
    assert cat.replace_if_changed("models", rows(1, later), {"model": "m"}, ignore=("created_at",)) == first
    assert cat.replace_if_changed("models", iter([rows(1, later)]), {"model": "m"}, ignore=("created_at",)) == first
    assert cat.query("SELECT created_at FROM models").column(0)[0].as_py() == now.replace(microsecond=now.microsecond)
    assert cat.replace_if_changed("models", rows(1, later), {"model": "m"}) > first  # created_at counts here
    assert cat.replace_if_changed("models", rows(2, later), {"model": "m"}, ignore=("created_at",)) > first + 1
    assert cat.query("SELECT count(*) FROM models").column(0)[0].as_py() == 2
