"""The README's main job on the embedded defaults (bundled model and corpus, offline explainer), and
every SQL query the README and docs/ show, run against what it produced: each must return rows."""

import json
import re
import shlex
from pathlib import Path

import duckdb
import pytest

from nxd.cli import main
from nx_dagster.model import open_checkpoint
from nx_dagster.storage import Catalog

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README and the reference pages


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


def _readme_sql_blocks() -> list[str]:
    return [b for page in DOCS for b in re.findall(r"```sql\n(.*?)```", page.read_text(), re.S)]


def _readme_nxd_sql_commands() -> list[list[str]]:
    """The arguments of every `nxd sql ...` line in the bash blocks of the README and docs/."""
    commands = []
    for block in [b for page in DOCS for b in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)]:
        for line in block.splitlines():
            m = re.match(r"\s*(?:\S*/)?nxd sql (.*)", line)
            if m:
                commands.append(["sql", *shlex.split(m.group(1), comments=True)])
    return commands


def test_every_readme_sql_example_returns_rows(home):
    """Each ```sql block runs in one session, statement by statement, as in the duckdb CLI (the
    INSTALL/ATTACH/USE lines are what the session already did); every query returns rows."""
    blocks = _readme_sql_blocks()
    assert len(blocks) >= 2
    ran = 0
    with Catalog(home).session(read_only=True) as con:
        for block in blocks:
            for stmt in con.extract_statements(block):
                code = "\n".join(ln for ln in stmt.query.splitlines() if not ln.strip().startswith("--")).split()
                if not code or code[0].upper() in ("INSTALL", "ATTACH", "USE", "LOAD"):
                    continue
                rel = con.sql(stmt.query)
                if stmt.type == duckdb.StatementType.SELECT:
                    rows = rel.fetchall()
                    assert rows, f"README query returned no rows on the bundled data:\n{stmt.query.strip()}"
                    ran += 1
    assert ran >= 12


def test_every_readme_nxd_sql_command_returns_rows(home, capsys):
    commands = _readme_nxd_sql_commands()
    assert len(commands) >= 3
    for args in commands:
        assert main([*args, "--home", str(home), "--format", "json"]) == 0, args
        rows = json.loads(capsys.readouterr().out)
        assert rows, f"README command returned no rows on the bundled data: nxd {' '.join(args)}"
    assert main(["sql", "--home", str(home), "--format", "json", "SELECT count(*) AS n FROM models"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 1}]


def test_nxd_sql_prints_every_statement_or_refuses(home, capsys):
    two = "SELECT 'first' AS which; SELECT 'second' AS which"
    assert main(["sql", "--home", str(home), two]) == 0
    out = capsys.readouterr().out
    assert "-- result 1 of 2" in out and "first" in out and "-- result 2 of 2" in out and "second" in out
    assert main(["sql", "--home", str(home), "--format", "json", two]) == 2
    err = capsys.readouterr().err
    assert "holds 2 queries" in err and "Fix:" in err
    # a setting followed by one query is one result: json stays one array
    assert main(["sql", "--home", str(home), "--format", "json",
                 "SET VARIABLE x = 41; SELECT getvariable('x') + 1 AS answer"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"answer": 42}]
