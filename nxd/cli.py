"""`nxd`: run the pipeline through the Dagster instance (`cli_run`: run, retry), query the catalog in SQL, look at neurons (a terminal
card, a static HTML browser), release, export and import the tables, open the UI of a data root, and collect
unreferenced files."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from nx_dagster.vocab import GELU_VARIANTS, PRE_FIX
from nxd.run import add_run_commands, input_error_of

def _input_error(what, problem, fix):
    from nx_dagster.errors import NxInputError

    return NxInputError(what, problem, fix)


def cmd_sql(args) -> int:
    """Run each statement of the query in order. With `--format table` every statement's result is
    printed (headed by the statement when there are several); csv and json print exactly one result,
    so there they refuse a query with more than one statement that returns rows."""
    from nx_dagster.storage import Catalog

    import duckdb

    cat = Catalog(args.home or None)

    def failed(e: duckdb.Error, sql: str):
        read_only = "read-only mode" in str(e)
        return _input_error(
            f"query {sql.strip()!r}", str(e).strip(),
            "nxd sql only reads: tables change through `nxd run` (or Dagster)" if read_only
            else "correct the SQL; `SHOW TABLES` and docs/tables.md list the tables and columns")

    with cat.session(read_only=True, snapshot=_release_snapshot(cat, args.release)) as con:
        try:
            statements = con.extract_statements(args.query)
        except duckdb.Error as e:
            raise failed(e, args.query) from None
        selects = [s for s in statements if s.type == duckdb.StatementType.SELECT]
        if args.format != "table" and len(selects) > 1:
            raise _input_error(f"query {args.query.strip()!r}", f"holds {len(selects)} queries and --format "
                               f"{args.format} prints one result", "run them one at a time, or use --format table")
        results = []
        for stmt in statements:
            try:
                rel = cat.retry(lambda: con.sql(stmt.query))
            except duckdb.Error as e:
                raise failed(e, stmt.query) from None
            if rel is not None:
                results.append((stmt.query, rel))
        for i, (sql, rel) in enumerate(results):
            if len(results) > 1:
                text = " ".join(line.split("--")[0].strip() for line in sql.strip().splitlines()).strip()
                print(f"-- result {i + 1} of {len(results)}: {text}", flush=True)
            _print_result(rel, args, cat)
    return 0


def _print_result(rel, args, cat) -> None:
    """Every column type the tables and DuckLake's functions return, in every format (storage/output.py)."""
    from nx_dagster.storage import output

    try:
        cat.retry(lambda: output.write(rel, args.format, args.max_rows))
    except ValueError as e:
        raise _input_error(f"query {args.query.strip()!r}", str(e), "alias the duplicate columns, or use --format table") from None


def _neuron_key(text: str) -> tuple[int, int]:
    import re

    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise _input_error(f"neuron {text!r}", "is not LAYER/NEURON", "write it like 2/17 (layer 2, neuron 17)")
    return int(m.group(1)), int(m.group(2))


def _check_neuron(model: dict, layer: int, neuron: int, text: str) -> None:
    if layer >= model["n_layer"] or neuron >= model["n_neurons"]:
        raise _input_error(f"neuron {text!r}", f"is outside {model['model']} ({model['n_layer']} layers of "
                           f"{model['n_neurons']} neurons)", f"use layers 0-{model['n_layer'] - 1} and "
                           f"neurons 0-{model['n_neurons'] - 1}")


def cmd_neuron(args) -> int:
    """`nxd neuron LAYER/NEURON`: the terminal card of one neuron."""
    from nx_dagster import settings
    from nx_dagster.storage import Catalog
    from nx_dagster.viewer.card import render_card
    from nx_dagster.viewer.reader import explanations_of, read_neurons
    from nx_dagster.viewer.source import open_at, pick_model

    layer, neuron = _neuron_key(args.neuron)
    variants = (args.variant,) if args.variant else GELU_VARIANTS  # (not model.gelu's parser: it would import torch)
    if variants[0] not in GELU_VARIANTS:
        raise _input_error(f"--variant {args.variant!r}", "is not a GELU variant",
                           f"use one of {', '.join(GELU_VARIANTS)}")
    if args.records < 0:
        raise _input_error(f"--records {args.records}", "is negative", "use 0 or more")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not settings.current().no_color)
    with open_at(Catalog(args.home or None), args.snapshot) as (con, snapshot):
        model = pick_model(con, args.model)
        _check_neuron(model, layer, neuron, args.neuron)
        view = read_neurons(con, model["model"], layer, [neuron], top_records=max(args.records, 1))[0]
        others = {c["other_layer"] for rows in view.neuron_links.values() for c in rows}
        linked = explanations_of(con, model["model"], others)
    print(render_card(view, snapshot=snapshot, variants=variants, records=args.records, color=color, linked=linked))
    return 0


def cmd_viewer(args) -> int:
    """`nxd viewer [DIR] [--serve]`: write the static neuron browser, and serve it if asked."""
    from nx_dagster.ranges import parse_ranges
    from nx_dagster.storage import Catalog
    from nx_dagster.viewer import serve, site
    from nx_dagster.viewer.source import open_at, pick_model

    if args.records < 0:
        raise _input_error(f"--records {args.records}", "is negative", "use 0 or more")
    cat = Catalog(args.home or None)
    folder = Path(args.dir).expanduser() if args.dir else cat.local / "viewer"
    with open_at(cat, args.snapshot) as (con, snapshot):
        model = pick_model(con, args.model)
        layers = parse_ranges(args.layers, "layers", model["n_layer"])
        neurons = parse_ranges(args.neurons, "neurons", model["n_neurons"])
        wanted = {"model": model["model"], "snapshot": snapshot, "layers": layers or list(range(model["n_layer"])),
                  "neurons": neurons}
        have = site.read_manifest(folder)
        if args.serve and have and all(have.get(k) == v for k, v in wanted.items()):
            print(f"nxd: {folder} already shows snapshot {snapshot}; not rewritten", file=sys.stderr)
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _input_error(f"viewer folder {str(folder)!r}", f"cannot be created ({e.strerror or e})",
                                   "give a DIR you can write to") from None
            out = site.write_site(con, folder, model, snapshot, layers, neurons, top_records=args.records)
            print(f"nxd: wrote {out['pages']} neuron pages and index.html to {folder} in {out['seconds']:.1f} s",
                  file=sys.stderr)
    if not args.serve:
        print((folder / "index.html").resolve().as_uri())
        return 0
    try:
        server = serve.make_server(folder, args.host, args.port)
    except OSError as e:
        raise _input_error(f"--port {args.port}", f"cannot be served ({e.strerror or e})",
                           "pick another port with --port, or stop what is using it") from None
    host, port = server.server_address[:2]
    print(f"nxd: serving {folder} on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _add_viewer_commands(sub) -> None:
    n = sub.add_parser("neuron", help="a terminal card of one neuron: records, explanations, scores, connections")
    n.add_argument("neuron", metavar="LAYER/NEURON", help="e.g. 2/17")
    n.add_argument("--variant", help=f"{' or '.join(GELU_VARIANTS)} (default both)")
    n.add_argument("--snapshot", type=int, help="the catalog as of this DuckLake snapshot (default: latest)")
    n.add_argument("--model", help="the model to show (default: the latest in `models`)")
    n.add_argument("--records", type=int, default=3, help="top records per variant (default 3)")
    n.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="ANSI colours (auto: on a terminal unless NO_COLOR is set)")
    n.add_argument("--home", help="NX_HOME (default ./nx_data)")
    n.set_defaults(fn=cmd_neuron)
    v = sub.add_parser("viewer", help="write a static neuron browser (HTML, no network needed) and optionally serve it")
    v.add_argument("dir", nargs="?", metavar="DIR", help="where to write the pages (default NX_HOME/viewer)")
    v.add_argument("--serve", action="store_true", help="then serve DIR on http://HOST:PORT/ until Ctrl-C")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8765, help="default 8765 (what the Dagster UI links to)")
    v.add_argument("--snapshot", type=int, help="the catalog as of this DuckLake snapshot (default: latest)")
    v.add_argument("--model", help="the model to show (default: the latest in `models`)")
    v.add_argument("--layers", help="only these layers, e.g. 0,2-3 (default all)")
    v.add_argument("--neurons", help="only these neurons of each layer, e.g. 0-99 (default all)")
    v.add_argument("--records", type=int, default=5, help="top records per variant on each page (default 5)")
    v.add_argument("--home", help="NX_HOME (default ./nx_data)")
    v.set_defaults(fn=cmd_viewer)


def cmd_gc(args) -> int:
    from nx_dagster.storage import Catalog
    from nx_dagster.storage.cleanup import collect

    cat = Catalog(args.home or None)
    if not cat.exists():
        raise _input_error(f"NX_HOME {cat.home!r}", "holds no catalog", "point NX_HOME (or --home) at a data root")
    found = collect(cat, apply=args.apply)
    for path, size in found:
        print(f"{'removed' if args.apply else 'would remove'} {path} ({size:,} bytes)")
    total = sum(size for _, size in found)
    verb = "removed" if args.apply else "can be removed (run with --apply)"
    print(f"nxd: {len(found)} unreferenced files/folders, {total:,} bytes {verb}", file=sys.stderr)
    return 0


def _release_snapshot(catalog, name: str | None) -> int | None:
    """The snapshot of release `name` (None: the current state); an unknown name lists the releases."""
    if name is None:
        return None
    from nx_dagster.storage.releases import release_snapshot

    return release_snapshot(catalog, name)


def cmd_release(args) -> int:
    """Make release NAME through the root's Dagster instance (it shows as a `release` materialization)."""
    import dagster as dg

    from assets.console import console_logger
    from assets.definitions import defs
    from assets.runtime.instance import open_instance
    from assets.resources import NxResource
    from nx_dagster.storage.releases import check_new_name, read_release

    nx = NxResource(home=args.home)
    check_new_name(nx.catalog, args.name)  # before a run starts: a taken or malformed name changes nothing
    definitions = defs()
    job = dg.Definitions(
        jobs=[dg.define_asset_job("nxd_release", selection=["release"])], assets=list(definitions.assets),
        resources={"nx": nx, "llm": definitions.resources["llm"]}, loggers={"console": console_logger},
    ).resolve_job_def("nxd_release")
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                  "ops": {"release": {"config": {"name": args.name, "message": args.message or ""}}}}
    result = job.execute_in_process(run_config=run_config, instance=open_instance(nx.catalog), raise_on_error=False)
    if not result.success:
        error = input_error_of(result)
        if error is not None:
            raise error
        raise SystemExit(f"nxd: release run {result.run_id} failed; nothing was released (see the Dagster UI)")
    m = read_release(nx.catalog, args.name)["manifest"]
    t = m["totals"]
    print(f"release {args.name}: snapshot {m['snapshot']}, parent {m['parent_release'] or '-'}; {t['rows']} rows in "
          f"{t['files']} files ({t['bytes']} bytes), new: {t['new_files']} files ({t['new_bytes']} bytes)")
    for table, change in m["changelog"]["tables"].items():
        if any(change.values()):
            print(f"  {table}: +{change['added']} added, ~{change['changed']} changed, -{change['removed']} removed")
    print(f"  neurons whose best explanation or score changed: {m['changelog']['neurons_changed']}")
    return 0


def cmd_ui(args) -> int:
    """`dagster dev` on this project's code location with the data root's own instance (its history)."""
    import subprocess

    from assets.runtime.instance import instance_home, open_instance
    from nx_dagster.storage import Catalog

    catalog = Catalog(args.home or None)
    catalog.check_writable()
    open_instance(catalog).dispose()  # creates the root's instance (and checks DAGSTER_HOME's claim)
    env = {**os.environ, "NX_HOME": str(catalog.home)}  # the child's environment: the root resolved here
    env.setdefault("DAGSTER_HOME", str(instance_home(catalog)))
    print(f"nxd: the UI of data root {catalog.home} (history in {env['DAGSTER_HOME']})", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "assets.definitions", "-p", str(args.port)]
    return subprocess.call(cmd, env=env)


def _export_session(args):
    """The catalog connection an export reads: the data root's current state, or a release's snapshot."""
    from nx_dagster.storage import Catalog

    cat = Catalog(args.home or None)
    return cat.session(read_only=True, snapshot=_release_snapshot(cat, args.release))


def cmd_export(args) -> int:
    from nx_dagster.interop.export import export_openai, export_parquet
    from nx_dagster.model.gelu import parse_variants

    variants = parse_variants(args.variants)
    with _export_session(args) as con:
        if args.format == "openai":
            out = export_openai(con, args.url, variants, args.model, args.corpus, args.release,
                                threads=args.threads, progress=not args.quiet)
            print(f"nxd: exported {out['written']} files ({out['skipped']} already complete) of {out['model']} "
                  f"to {args.url}: {json.dumps(out['counts'])}", file=sys.stderr)
        else:
            out = export_parquet(con, args.url, variants, args.model, args.corpus)
            print(f"nxd: exported {out['model']} to {args.url} as Parquet: {json.dumps(out['counts'])}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from nx_dagster.interop.import_ import import_openai
    from nx_dagster.storage import Catalog

    catalog = Catalog(args.home or None)
    catalog.check_writable()
    shape = None
    if args.shape:
        try:
            shape = tuple(int(x) for x in args.shape.lower().split("x"))
            assert len(shape) == 2 and min(shape) > 0
        except (ValueError, AssertionError):
            raise _input_error(f"--shape {args.shape!r}", "is not LAYERSxNEURONS", "write e.g. 12x3072") from None
    out = import_openai(catalog, args.url, args.model, threads=args.threads, progress=not args.quiet, shape=shape)
    missing = ", ".join(f"{k}: {v} of {out['expected_files'][k]}" for k, v in out["missing_files"].items()) or "none"
    print(f"nxd: imported {args.url} as model {out['model']} (corpus {out['corpus']}, {PRE_FIX}): layers {out['layers']} "
          f"({out['layers_already_imported']} already imported), rows {json.dumps(out['rows'])}; missing files: {missing}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nxd", description="Explain GPT-2 neurons as a Dagster data product.",
                                epilog="Settings are environment variables (NX_HOME, NX_CATALOG, OPENAI_API_KEY...): "
                                       "docs/settings.md lists them; a flag wins over its variable.")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_run_commands(sub)
    q = sub.add_parser("sql", help="run a SQL query over the catalog")
    q.add_argument("query")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.add_argument("--home", help="NX_HOME (default ./nx_data)")
    q.add_argument("--max-rows", type=int, default=40)
    q.add_argument("--release", help="query the catalog as it was in this release (read-only)")
    q.set_defaults(fn=cmd_sql)
    rel = sub.add_parser("release", help="freeze every table into an immutable, named release")
    rel.add_argument("name", help="a new name: 1-64 letters, digits, '.', '_' or '-'")
    rel.add_argument("--message", help="a note stored with the release")
    rel.add_argument("--home", help="NX_HOME (default ./nx_data)")
    rel.set_defaults(fn=cmd_release)
    u = sub.add_parser("ui", help="open the Dagster UI on a data root's own run history")
    u.add_argument("--home", help="NX_HOME (default ./nx_data)")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    g = sub.add_parser("gc", help="list (or --apply: remove) files under NX_HOME that no snapshot references")
    g.add_argument("--home", help="NX_HOME (default ./nx_data)")
    g.add_argument("--apply", action="store_true", help="remove them (default: only list them)")
    g.set_defaults(fn=cmd_gc)
    _add_viewer_commands(sub)
    x = sub.add_parser("export", help="write the tables to a folder or URL in the OpenAI layout or as Parquet")
    x.add_argument("url", help="a local folder or an fsspec URL (s3://bucket/prefix)")
    x.add_argument("--format", choices=("openai", "parquet"), default="openai")
    x.add_argument("--variants", help=f"{','.join(GELU_VARIANTS)} (default both)")
    x.add_argument("--release", help="export a named release instead of the current catalog")
    x.add_argument("--model", help="the model to export (default: the only one)")
    x.add_argument("--corpus", help="the corpus whose activations to export (default: the only one)")
    x.add_argument("--home", help="NX_HOME (default ./nx_data)")
    x.add_argument("--threads", type=int, default=16, help="files written at once (default 16)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(fn=cmd_export)
    i = sub.add_parser("import", help=f"read files in the published OpenAI layout into the tables ({PRE_FIX} lineage)")
    i.add_argument("url", help="a dataset root, an `nxd export` root or one layer folder: local, https:// or s3://")
    i.add_argument("--model", default="openai-gpt2-small", help="model name of the imported rows (default openai-gpt2-small)")
    i.add_argument("--home", help="NX_HOME (default ./nx_data)")
    i.add_argument("--shape", help="LAYERSxNEURONS (e.g. 12x3072) where the URL has no manifest and cannot be listed (https)")
    i.add_argument("--threads", type=int, default=16, help="files read at once (default 16)")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(fn=cmd_import)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from nx_dagster.errors import NxInputError

    try:
        return args.fn(args)
    except NxInputError as e:
        print(f"nxd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
