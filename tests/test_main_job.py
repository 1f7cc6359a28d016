"""The README's main job on the embedded defaults (bundled model and corpus, offline explainer), and
every SQL query the README shows, run against what it produced."""

import json
import re
from pathlib import Path

import pytest

from nx_dagster.cli import main
from nx_dagster.model import open_checkpoint
from nx_dagster.storage import Catalog

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def home(bundled_run):
    return bundled_run / "nx_data"


def test_every_stage_for_every_neuron_in_both_lineages(home):
    cfg = open_checkpoint("bundled").config
    neurons = cfg.n_layer * cfg.n_neurons
    cat = Catalog(home)
    one = lambda q: cat.query(q).column(0)[0].as_py()  # noqa: E731
    assert one("SELECT count(*) FROM sequences") == 320
    assert one("SELECT count(*) FROM neuron_stats") == 2 * neurons
    assert one("SELECT count(*) FROM activation_records WHERE kind = 'top'") == 2 * neurons * 20
    assert one("SELECT count(*) FROM gelu_fix_impact") == cfg.n_layer + 1
    assert one("SELECT count(DISTINCT (layer, neuron)) FROM neuron_connections") == neurons
    assert one("SELECT count(*) FROM token_connections") == neurons * 2 * 2 * 20  # direction × sign × k
    assert one("SELECT count(*) FROM explanations") == 2 * neurons
    assert one("SELECT count(*) FROM explanations WHERE explanation IS NOT NULL") >= 0.99 * 2 * neurons
    assert one("SELECT count(*) FROM explanations WHERE explanation IS NULL AND failure_reason IS NULL") == 0
    assert one("SELECT count(*) FROM scores") == 3 * neurons
    assert one("SELECT count(*) FROM scores WHERE ev_correlation IS NOT NULL") >= 0.8 * 3 * neurons
    assert one("SELECT count(*) FROM scores WHERE ev_correlation IS NULL AND failure_reason IS NULL") == 0
    assert one("SELECT count(*) FROM token_activation_summary") > 0
    assert one("SELECT count(*) FROM llm_calls") == 0  # offline: no request was made


def test_readme_queries_run(home, capsys):
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    assert blocks
    cat = Catalog(home)
    latest = cat.query("SELECT max(snapshot_id) FROM nx.snapshots()").column(0)[0].as_py()
    ran = 0
    for block in blocks:
        for stmt in block.split(";"):
            sql = "\n".join(line for line in stmt.splitlines() if not line.strip().startswith("--")).strip()
            if not sql or sql.upper().startswith(("INSTALL", "ATTACH", "USE")):
                continue
            sql = re.sub(r"VERSION => \d+", f"VERSION => {latest}", sql)
            cat.query(sql)
            ran += 1
    assert ran >= 10
    assert main(["sql", "--home", str(home), "--format", "json", "SELECT count(*) AS n FROM models"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 1}]
