"""`nxd`: run the pipeline through the Dagster instance, query the catalog in SQL, export and import it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

STAGES = ("activations", "connections", "explanations", "scores")


def _resource(args):
    from assets.resources import NxResource

    return NxResource(home=args.home, model=args.model, corpus=args.corpus, max_sequences=args.max_sequences,
                      device=args.device, dtype=args.dtype, batch_size=args.batch_size, seq_len=args.seq_len,
                      top_k=args.top_k, random_k=args.random_k, quantile_k=args.quantile_k, seed=args.seed)


def _llm_resource(args, base):
    """A new LLMResource from the code location's one and the flags (a copy with `model_copy` would keep
    the old Dagster config, and the run would get the defaults)."""
    from assets.llm import LLMResource

    fields = {k: getattr(base, k) for k in LLMResource.model_fields}
    fields.update({k: v for k, v in (("explainer", args.explainer), ("simulator", args.simulator),
                                     ("explainer_model", args.explainer_model), ("simulator_model", args.simulator_model),
                                     ("ledger", args.ledger)) if v})
    return LLMResource(**fields)


def cmd_run(args) -> int:
    import dagster as dg

    from assets.definitions import defs
    from assets.console import console_logger
    from assets.instance import open_instance
    from nx_dagster.model.gelu import parse_variants
    from nx_dagster.ranges import contiguous_runs, parse_ranges

    stages = [s.strip() for s in (args.stages or ",".join(STAGES)).split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            raise _input_error(f"stage {s!r}", "is not a stage", f"use some of {', '.join(STAGES)}")
    variants = parse_variants(args.variants)
    nx = _resource(args)
    # Validate every input before anything runs, so bad input changes no table.
    print("nxd: checking the checkpoint and the corpus", file=sys.stderr, flush=True)
    nx.validate()
    cfg = nx.subject.ckpt.config
    layer_list = parse_ranges(args.layers, "layers", cfg.n_layer) or list(range(cfg.n_layer))
    neurons = parse_ranges(args.neurons, "neurons", cfg.n_neurons)
    if neurons and len(contiguous_runs(neurons)) > 1:
        raise _input_error(f"neurons {args.neurons!r}", "is not one contiguous range", "use a range like 0-511")

    definitions = defs()
    all_assets = list(definitions.assets)
    llm = _llm_resource(args, definitions.resources["llm"])
    llm.explainer_name, llm.simulator_name  # noqa: B018  (validates the choices before anything runs)
    instance = open_instance(nx.catalog)
    resources = {"nx": nx, "llm": llm}
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

    def run(selection: list[str], **kw) -> None:
        label = ", ".join(selection) + (f" (layers {kw['tags']['dagster/asset_partition_range_start']}-"
                                        f"{kw['tags']['dagster/asset_partition_range_end']})" if "tags" in kw else "")
        print(f"nxd: materializing {label}", file=sys.stderr, flush=True)
        job = dg.Definitions(jobs=[dg.define_asset_job("nxd_run", selection=selection)], assets=all_assets,
                             resources=resources, loggers={"console": console_logger}).resolve_job_def("nxd_run")
        result = job.execute_in_process(run_config=kw.pop("run_config", run_config), instance=instance,
                                        raise_on_error=False, **kw)
        if not result.success:
            error = input_error_of(result)
            if error is not None:  # a failure the user can fix: the usual one line
                raise error
            raise SystemExit(f"nxd: run {result.run_id} failed ({label}); see the Dagster UI or the log above")
        print(f"nxd: done {label} (run {result.run_id})", file=sys.stderr, flush=True)

    if "activations" in stages:
        run(["model", "sequences"])
        cfgs = dict(run_config)
        if neurons:
            cfgs["ops"] = {f"{v}__activations": {"config": {"neurons": f"{neurons[0]}-{neurons[-1]}"}} for v in variants}
        for rng in contiguous_runs(layer_list):
            run([f"{v}/activations" for v in variants], run_config=cfgs,
                tags={"dagster/asset_partition_range_start": str(rng.start),
                      "dagster/asset_partition_range_end": str(rng.stop - 1)})
        if set(variants) == {"pre_fix", "post_fix"}:
            run(["gelu_fix_impact"])
    if "activations" not in stages:
        run(["model"])  # registers the layer partitions; cheap
    shard_cfg = {"config": {"neurons": f"{neurons[0]}-{neurons[-1]}"}} if neurons else None

    def per_layers(keys: list[str]) -> None:
        cfgs = dict(run_config)
        if shard_cfg:
            cfgs["ops"] = {k.replace("/", "__"): shard_cfg for k in keys if k != "connections"}
        for rng in contiguous_runs(layer_list):
            run(keys, run_config=cfgs, tags={"dagster/asset_partition_range_start": str(rng.start),
                                             "dagster/asset_partition_range_end": str(rng.stop - 1)})

    if "connections" in stages:
        per_layers(["connections"])
    if "explanations" in stages:
        per_layers([f"{v}/explanations" for v in variants])
    if "scores" in stages:
        cross = ["post_fix/scores_of_pre_fix_explanations"] if set(variants) == {"pre_fix", "post_fix"} else []
        per_layers([f"{v}/scores" for v in variants] + cross)
    return 0


def input_error_of(result):
    """The NxInputError (or a Failure whose description is one) that failed a run, rebuilt from its event
    log, or None: the step's stack trace stays in the Dagster UI."""
    from nx_dagster.errors import NxInputError

    for event in result.all_events:
        if not event.is_step_failure:
            continue
        err = event.step_failure_data.error
        while err is not None:
            text = err.message.strip()
            if (err.cls_name in NxInputError.kinds() or err.cls_name == "Failure") and ". Fix: " in text:
                text = text.split(f"{err.cls_name}: ", 1)[-1]
                head, _, fix = text.partition(". Fix: ")
                what, _, problem = head.partition(": ")
                return NxInputError(what, problem, fix)
            err = err.cause or err.context
    return None


def _input_error(what, problem, fix):
    from nx_dagster.errors import NxInputError

    return NxInputError(what, problem, fix)


def cmd_sql(args) -> int:
    from nx_dagster.storage import Catalog

    import duckdb

    cat = Catalog(args.home or None)
    with cat.session(read_only=True) as con:
        try:
            rel = cat._retry(lambda: con.sql(args.query))
        except duckdb.Error as e:
            read_only = "read-only mode" in str(e)
            raise _input_error(
                f"query {args.query!r}", str(e).strip(),
                "nxd sql only reads: tables change through `nxd run` (or Dagster)" if read_only
                else "correct the SQL; `SHOW TABLES` and the README's SQL contract list the tables and columns",
            ) from None
        if rel is None:
            return 0
        if args.format == "table":
            rel.show(max_rows=args.max_rows, max_width=200)
        elif args.format == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(rel.fetch_arrow_table(), sys.stdout.buffer)
        else:
            cols = rel.columns
            rows = [dict(zip(cols, r)) for r in rel.fetchall()]
            json.dump(rows, sys.stdout, default=str)
            sys.stdout.write("\n")
    return 0


def cmd_ui(args) -> int:
    """`dagster dev` on this project's code location with the data root's own instance (its history)."""
    import subprocess

    from assets.instance import open_instance
    from nx_dagster.storage import Catalog

    catalog = Catalog(args.home or None)
    catalog.check_writable()
    open_instance(catalog).dispose()  # creates the root's instance (and checks DAGSTER_HOME's claim)
    env = {**os.environ, "NX_HOME": str(catalog.home)}
    env.setdefault("DAGSTER_HOME", str(Path(catalog.home) / ".dagster"))
    print(f"nxd: the UI of data root {catalog.home} (history in {env['DAGSTER_HOME']})", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "assets.definitions", "-p", str(args.port)]
    return subprocess.call(cmd, env=env)


def _export_session(args):
    """The catalog connection an export reads: the data root's current state (a `--release` would attach
    that release's snapshot here)."""
    from nx_dagster.storage import Catalog

    if args.release:
        raise _input_error(f"--release {args.release!r}", "releases are not available in this version",
                           "export the current catalog (leave out --release)")
    return Catalog(args.home or None).session(read_only=True)


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
    print(f"nxd: imported {args.url} as model {out['model']} (corpus {out['corpus']}, pre_fix): layers {out['layers']} "
          f"({out['layers_already_imported']} already imported), rows {json.dumps(out['rows'])}; missing files: {missing}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nxd", description="Explain GPT-2 neurons as a Dagster data product.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="materialize stages through the Dagster instance (runs show in the UI)")
    r.add_argument("--stages", help=f"comma list of {','.join(STAGES)} (default: all)")
    r.add_argument("--variants", help="pre_fix,post_fix (default both)")
    r.add_argument("--layers", help="e.g. 0,2-5 (default all)")
    r.add_argument("--neurons", help="a contiguous range, e.g. 0-99 (default all)")
    r.add_argument("--model", help="NX_MODEL: 'bundled', a folder, an fsspec URL or a Hub id")
    r.add_argument("--corpus", help="NX_CORPUS: 'bundled', text/JSONL/Parquet files, a glob or a URL")
    r.add_argument("--home", help="NX_HOME: the data root (default ./nx_data)")
    r.add_argument("--max-sequences", type=int, default=None, help="use only the first N sequences")
    r.add_argument("--top-k", type=int, default=20, help="top records per neuron (default 20)")
    r.add_argument("--random-k", type=int, default=20, help="random records per neuron (default 20)")
    r.add_argument("--quantile-k", type=int, default=5, help="records per quantile bin (default 5)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    r.add_argument("--ledger", help="NX_LLM_LEDGER: the LLM call ledger file (default NX_HOME/llm_ledger.sqlite)")
    r.add_argument("--seq-len", type=int, default=64)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    r.add_argument("--explainer", help="auto (LLM if OPENAI_API_KEY is set, else token_lookup), token_lookup, "
                                       "token_activation_pairs")
    r.add_argument("--simulator", help="auto, token_lookup, json_logprobs, echo_logprobs, logprob_free")
    r.add_argument("--explainer-model", help="chat model for explanations (NX_EXPLAINER_MODEL)")
    r.add_argument("--simulator-model", help="model for simulations (NX_SIMULATOR_MODEL)")
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("sql", help="run a SQL query over the catalog")
    q.add_argument("query")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.add_argument("--home", help="NX_HOME (default ./nx_data)")
    q.add_argument("--max-rows", type=int, default=40)
    q.set_defaults(fn=cmd_sql)
    u = sub.add_parser("ui", help="open the Dagster UI on a data root's own run history")
    u.add_argument("--home", help="NX_HOME (default ./nx_data)")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    x = sub.add_parser("export", help="write the tables to a folder or URL in the OpenAI layout or as Parquet")
    x.add_argument("url", help="a local folder or an fsspec URL (s3://bucket/prefix)")
    x.add_argument("--format", choices=("openai", "parquet"), default="openai")
    x.add_argument("--variants", help="pre_fix,post_fix (default both)")
    x.add_argument("--release", help="export a named release instead of the current catalog")
    x.add_argument("--model", help="the model to export (default: the only one)")
    x.add_argument("--corpus", help="the corpus whose activations to export (default: the only one)")
    x.add_argument("--home", help="NX_HOME (default ./nx_data)")
    x.add_argument("--threads", type=int, default=16, help="files written at once (default 16)")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(fn=cmd_export)
    i = sub.add_parser("import", help="read files in the published OpenAI layout into the tables (pre_fix lineage)")
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
