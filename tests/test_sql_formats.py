"""`nxd sql` prints every column of every table, DuckLake's own functions and every DuckDB type in
every format (`table`, `csv`, `json`), NULLs, NaN and nested values included."""

import csv
import io
import json

import pytest

from nxd.cli import main
from nx_dagster.storage import Catalog
from nx_dagster.storage.schema import TABLES

TEXT = 'a, "quoted"\nline – ünï'


def _value(typ: str):
    """A SQL literal of DuckDB type `typ` that exercises the writer (separators, quotes, NaN, NULL inside lists)."""
    if typ.endswith("[]"):
        return f"[{_value(typ[:-2])}, NULL, {_value(typ[:-2])}]::{typ}"
    return {"VARCHAR": "'" + TEXT.replace("'", "''") + "'", "INTEGER": "7", "BIGINT": "9007199254740993",
            "FLOAT": "'nan'::FLOAT", "DOUBLE": "'-inf'::DOUBLE", "BOOLEAN": "true",
            "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ '2026-01-02 03:04:05+00'"}[typ]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    cat = Catalog(root)
    with cat.session() as con:
        for table in TABLES:
            cols = con.execute(f"DESCRIBE {table}").fetchall()
            values = ", ".join(_value(t) for _, t, *_ in cols)
            con.execute(f"INSERT INTO {table} VALUES ({values})")
            con.execute(f"INSERT INTO {table} DEFAULT VALUES")  # every column NULL
    return root


QUERIES = [f"SELECT * FROM {t}" for t in TABLES] + [
    "SELECT * FROM nx.snapshots()",  # MAP(VARCHAR, VARCHAR[]) and a time zone
    "SELECT * FROM ducklake_table_info('nx')",
    "SELECT * FROM test_all_types()",  # every DuckDB type, its min, max and NULL
]


def test_every_format_prints_every_column(home, capfd):
    with Catalog(home).session(read_only=True) as con:
        expected = {q: con.execute(q).to_arrow_table() for q in QUERIES}
    for query, table in expected.items():
        cols, n = table.column_names, table.num_rows
        assert n >= 2, query
        assert main(["sql", "--home", str(home), "--format", "json", query]) == 0, query
        rows = json.loads(capfd.readouterr().out)
        assert len(rows) == n and all(list(r) == cols for r in rows), query
        assert main(["sql", "--home", str(home), "--format", "csv", query]) == 0, query
        parsed = list(csv.reader(io.StringIO(capfd.readouterr().out)))
        assert parsed[0] == cols and len(parsed) == n + 1 and all(len(r) == len(cols) for r in parsed), query
        if query in (QUERIES[1], *QUERIES[-3:]):  # the box renderer: a sample (it has no per-type code of ours)
            assert main(["sql", "--home", str(home), "--format", "table", "--max-rows", "5", query]) == 0, query
            assert cols[0] in capfd.readouterr().out, query
        if query == "SELECT * FROM sequences":  # nested values stay nested (JSON), text intact
            full = [r for r in rows if r["tokens"] is not None][0]
            assert full["tokens"] == [TEXT, None, TEXT] and full["token_ids"] == [7, None, 7]
            assert full["sequence_id"] == 9007199254740993
            cell = [r for r in parsed[1:] if r[cols.index("tokens")]][0][cols.index("tokens")]
            assert json.loads(cell) == [TEXT, None, TEXT]
        if query == "SELECT * FROM activation_records":  # NaN is not valid JSON: a string
            full = [r for r in rows if r["activations"] is not None][0]
            assert full["max_activation"] == "NaN" and full["activations"] == ["NaN", None, "NaN"]
        if query == "SELECT * FROM nx.snapshots()":  # a MAP(VARCHAR, VARCHAR[]) column
            assert any(isinstance(r["changes"], dict) and r["changes"] for r in rows)


def test_duplicate_column_names_in_json_are_named(home, capfd):
    assert main(["sql", "--home", str(home), "--format", "json", "SELECT 1 AS a, 2 AS a"]) == 2
    err = capfd.readouterr().err
    assert "unique column names" in err and "Fix:" in err
