"""NX_HOME on object storage, against a real S3-compatible server on loopback (moto's standalone server,
authentication on; tests/s3_server.py): a tiny run of every stage whose checkpoint and corpus also come
from s3://, seen by a second process; a release; both exports to s3:// and an import back from there;
a killed export and a killed run that leave the previous state; and the bad AWS settings, each refused
with one line naming the bucket and the setting before any work."""

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
from nx_dagster.storage.s3 import filesystem
from tests.checkpoints import build_checkpoint
from tests.test_openai_format import TEXT, load

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--seq-len", "16", "--top-k", "8", "--random-k", "6", "--quantile-k", "2",
       "--explainer", "token_lookup", "--simulator", "token_lookup"]


def nxd(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`nxd` in a separate process (a second machine's view: nothing shared but the bucket and NX_STATE)."""
    return subprocess.run([sys.executable, "-m", "nxd", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def s3run(s3_server, tmp_path_factory):
    """Every stage of a tiny run with NX_HOME, the checkpoint and the corpus on s3://, then release r1."""
    root = tmp_path_factory.mktemp("s3run")
    mp = pytest.MonkeyPatch()
    bucket = "nx-s3run"
    s3_server.client().create_bucket(Bucket=bucket)
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    for k in ("NX_HOME", "NX_CATALOG", "DAGSTER_HOME", "NX_MODEL", "NX_CORPUS", "OPENAI_API_KEY", "AWS_PROFILE"):
        mp.delenv(k, raising=False)
    mp.setenv("NX_STATE", str(root / "state"))
    home = f"s3://{bucket}/root"
    mp.setenv("NX_HOME", home)
    ck = build_checkpoint(root / "tiny", n_layer=2, n_embd=32, n_head=4)
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}. {TEXT * 6}"}) + "\n" for i in range(3)))
    fs = filesystem()
    fs.put(str(ck), f"{bucket}/inputs/tiny", recursive=True)
    fs.put_file(str(corpus), f"{bucket}/inputs/c.jsonl")
    try:
        assert main(["run", "--model", f"s3://{bucket}/inputs/tiny", "--corpus", f"s3://{bucket}/inputs/c.jsonl",
                     *RUN]) == 0
        assert main(["release", "r1", "--message", "on s3"]) == 0
        yield {"home": home, "bucket": bucket, "root": root, "ck": ck, "corpus": corpus, "server": s3_server}
    finally:
        mp.undo()


@pytest.mark.slow
def test_every_stage_on_s3_and_a_second_process_sees_it(s3run, monkeypatch):
    for k, v in s3run["server"].env().items():
        monkeypatch.setenv(k, v)
    env = {"NX_HOME": s3run["home"], "NX_STATE": str(s3run["root"] / "state")}
    fs = filesystem()
    data = fs.find(f"{s3run['bucket']}/root/data/")
    assert any(p.endswith(".parquet") for p in data) and fs.exists(f"{s3run['bucket']}/root/root_id")
    assert not list((s3run["root"] / "state").glob("data")), "no Parquet data in the local state folder"
    counts = nxd("sql", "--format", "json", "SELECT (SELECT count(*) FROM activation_records) AS records, "
                 "(SELECT count(*) FROM scores) AS scores, (SELECT count(*) FROM neuron_connections) AS conn, "
                 "(SELECT count(*) FROM releases) AS releases", env=env)
    assert counts.returncode == 0, counts.stderr
    row = json.loads(counts.stdout)[0]
    assert row["records"] > 0 and row["scores"] > 0 and row["conn"] > 0 and row["releases"] == 1
    rel = nxd("sql", "--release", "r1", "--format", "json", "SELECT count(*) AS n FROM neuron_stats", env=env)
    assert rel.returncode == 0 and json.loads(rel.stdout)[0]["n"] == 2 * 2 * 128, rel.stderr
    # the release's manifest lists its files relative to data/ (a root copied to another bucket still matches)
    man = nxd("sql", "--format", "json", "SELECT manifest, n_files, new_files FROM releases", env=env)
    rel_row = json.loads(man.stdout)[0]
    files = [f["path"] for t in json.loads(rel_row["manifest"])["tables"].values() for f in t.get("files", [])]
    assert files and rel_row["n_files"] == rel_row["new_files"] == len(files)
    assert all(p.startswith("main/") and p.endswith(".parquet") for p in files), files[:3]
    # the source of the model is the s3:// URL it came from
    src = nxd("sql", "--format", "json", "SELECT source FROM models", env=env)
    assert src.returncode == 0 and json.loads(src.stdout)[0]["source"].startswith("s3://"), src.stdout + src.stderr


@pytest.mark.slow
def test_exports_to_s3_parse_and_import_back(s3run, tmp_path, monkeypatch, capsys):
    for k, v in s3run["server"].env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NX_STATE", str(s3run["root"] / "state"))
    home, bucket = s3run["home"], s3run["bucket"]
    out = f"s3://{bucket}/exports/openai"
    assert main(["export", "--home", home, "--quiet", "--release", "r1", out]) == 0
    fs = filesystem()
    manifest = json.loads(fs.cat_file(f"{out}/manifest.json"))
    assert manifest["complete"] and manifest["release"] == "r1" and manifest["variants"] == ["pre_fix", "post_fix"]
    recs = sorted(fs.find(f"{out}/post_fix/collated-activations/"))
    assert len(recs) == manifest["counts"]["post_fix"]["records"] == 2 * 128
    for path in recs[::37]:
        r = load(json.loads(fs.cat_file(path)))
        assert len(r.random_sample_by_quantile) == 5 and len(r.quantile_boundaries) == 4
    assert main(["export", "--home", home, "--quiet", "--format", "parquet", f"s3://{bucket}/exports/pq"]) == 0
    pq = fs.find(f"{bucket}/exports/pq/")
    assert any("activation_records" in p for p in pq) and any("scores" in p for p in pq)

    local = tmp_path / "imported"
    assert main(["import", "--home", str(local), "--model", "pub", "--quiet", out]) == 0
    src, dst = Catalog(home), Catalog(local)
    q = ("SELECT layer, neuron, mean, variance, quantile_boundaries FROM neuron_stats WHERE model = ? "
         "AND gelu_variant = 'pre_fix' ORDER BY layer, neuron")
    model = src.query("SELECT model FROM models").column(0)[0].as_py()
    assert src.query(q, [model]).to_pylist() == dst.query(q, ["pub"]).to_pylist()
    assert dst.query("SELECT count(*) FROM activation_records WHERE source NOT LIKE 's3://%'").column(0)[0].as_py() == 0


@pytest.mark.slow
def test_killed_export_and_killed_run_leave_the_previous_state(s3run, monkeypatch):
    for k, v in s3run["server"].env().items():
        monkeypatch.setenv(k, v)
    env = {"NX_HOME": s3run["home"], "NX_STATE": str(s3run["root"] / "state")}
    home, bucket = s3run["home"], s3run["bucket"]
    fs = filesystem()
    # a killed export: every object present is whole (S3 shows an object only once its upload completed)
    out = f"s3://{bucket}/exports/killed"
    proc = subprocess.Popen([sys.executable, "-m", "nxd", "export", "--home", home, "--quiet",
                             "--threads", "2", out], cwd=ROOT, env={**os.environ, **env}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(fs.find(f"{bucket}/exports/killed/")) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, "the export ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = fs.find(f"{bucket}/exports/killed/")
    assert written and not fs.exists(f"{out}/manifest.json") or \
        not json.loads(fs.cat_file(f"{out}/manifest.json"))["complete"]
    for path in written:
        if path.endswith(".json") and "manifest" not in path:
            json.loads(fs.cat_file(path))  # whole JSON, never a prefix of one
    rerun = nxd("export", "--home", home, "--quiet", out, env=env)
    assert rerun.returncode == 0 and "already complete" in rerun.stderr, rerun.stderr
    assert json.loads(fs.cat_file(f"{out}/manifest.json"))["complete"]

    # a run killed while it writes: the catalog still answers with what it held; the rerun ends equal
    args = ["run", "--model", f"s3://{bucket}/inputs/tiny", "--corpus", f"s3://{bucket}/inputs/c.jsonl", *RUN,
            "--stages", "activations", "--top-k", "7"]
    proc = subprocess.Popen([sys.executable, "-m", "nxd", *args], cwd=ROOT, env={**os.environ, **env},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # kill once the recording is under way
        seen.append(line)
        if "activations" in line and "tokens/s" in line:
            break
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any("tokens/s" in line for line in seen), "".join(seen[-20:])
    # still answers, and each (variant, layer) partition is whole: old (top-k 8) or new (top-k 7), never mixed
    mixed = Catalog(home).query(
        "SELECT gelu_variant, layer, count(DISTINCT n) AS k FROM (SELECT gelu_variant, layer, neuron, count(*) AS n "
        "FROM activation_records WHERE kind = 'top' GROUP BY ALL) GROUP BY ALL HAVING k > 1").to_pylist()
    assert mixed == []
    # files the killed run left on S3 unreferenced: `nxd gc` finds them (DuckLake's orphan listing over httpfs)
    orphan = f"{bucket}/root/data/main/neuron_stats/ducklake-orphan-by-test.parquet"
    fs.pipe_file(orphan, b"PAR1")
    gc = nxd("gc", "--apply", env=env)
    assert gc.returncode == 0 and "ducklake-orphan-by-test.parquet" in gc.stdout, gc.stdout + gc.stderr
    assert not fs.exists(orphan)
    again = nxd(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    top = Catalog(home).query("SELECT max(rank) FROM activation_records WHERE kind = 'top'").column(0)[0].as_py()
    assert top == 6  # the rerun's top-k 7 replaced the killed run's partitions, no duplicates
    dup = Catalog(home).query("SELECT count(*) - count(DISTINCT (gelu_variant, layer, neuron, kind, rank, quantile)) "
                              "FROM activation_records").column(0)[0].as_py()
    assert dup == 0

    # release r2 after that change: its changelog and new files name only the activations stage's tables;
    # r1 and r2 each answer with their own data; r1 cannot be released again
    r2 = nxd("release", "r2", env=env)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    man = json.loads(nxd("sql", "--format", "json", "SELECT release, manifest FROM releases ORDER BY snapshot",
                         env=env).stdout)
    (m1, m2) = [json.loads(r["manifest"])["tables"] for r in man]
    old = {f["path"] for t in m1.values() for f in t["files"]}
    new_in = {t for t, e in m2.items() for f in e["files"] if f["path"] not in old}
    stage = {"activation_records", "neuron_stats", "token_activation_summary", "gelu_fix_impact"}
    assert "activation_records" in new_in and new_in <= stage, new_in
    changed = {t for t, e in m2.items() if any(e["changes"].values())}
    assert "activation_records" in changed and changed <= stage, changed
    ranks = [json.loads(nxd("sql", "--release", r, "--format", "json", "SELECT max(rank) AS k FROM activation_records "
                            "WHERE kind = 'top'", env=env).stdout)[0]["k"] for r in ("r1", "r2")]
    assert ranks == [7, 6]
    again = nxd("release", "r1", env=env)
    assert again.returncode == 2 and "r1" in again.stderr
    assert len(json.loads(nxd("sql", "--format", "json", "SELECT release FROM releases", env=env).stdout)) == 2


def test_bad_aws_settings_are_refused_before_any_work(s3_home, s3_server, tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    bucket = s3_home.removeprefix("s3://").split("/")[0]
    cases = [
        ({"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1"}, [bucket, "AWS_ACCESS_KEY_ID", "refused"]),
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, [bucket, "AWS_SECRET_ACCESS_KEY", "refused"]),
        ({"NX_HOME": "s3://nx-no-such-bucket/root"}, ["nx-no-such-bucket", "does not exist", "NX_HOME"]),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, ["AWS_ENDPOINT_URL", "cannot be reached"]),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, [bucket, "no AWS credentials", "AWS_ACCESS_KEY_ID"]),
        ({"AWS_PROFILE": "nx-no-such-profile"}, ["AWS_PROFILE", "nx-no-such-profile", "unset AWS_PROFILE"]),
        ({"NX_HOME": "gs://bucket/root"}, ["gs://", "s3://bucket/prefix"]),
        ({"NX_CATALOG": "mysql://x/y"}, ["NX_CATALOG", "postgresql://"]),
    ]
    for env, words in cases:
        with monkeypatch.context() as m:
            m.setenv("NX_HOME", s3_home)
            for k, v in env.items():
                m.setenv(k, v) if v else m.delenv(k, raising=False)
            if "AWS_ACCESS_KEY_ID" in env and not env["AWS_ACCESS_KEY_ID"]:
                m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
                m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
                m.setenv("AWS_EC2_METADATA_DISABLED", "true")
            t = time.monotonic()
            assert main(["run", "--stages", "activations", "--max-sequences", "8"]) == 2, env
            err = capsys.readouterr().err
            lines = [ln for ln in err.splitlines() if ln.startswith("nxd: error:")]
            assert len(lines) == 1 and all(w in lines[0] for w in words) and "Fix:" in lines[0], (env, err)
            assert time.monotonic() - t < 60
    assert not (state / "catalog.sqlite").exists()
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
