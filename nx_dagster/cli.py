"""`nxd`: run the pipeline through the Dagster instance, query the catalog in SQL, collect unreferenced files."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

STAGES = ("activations", "connections", "explanations", "scores")


def _instance():
    """The project's Dagster instance: $DAGSTER_HOME if set, else ./dagster.yaml (as `dagster dev`
    from the repository root uses it), else an instance under NX_HOME/.dagster.

    Opening an instance for the first time creates its SQLite storage; two `nxd run`s started at
    once would race on that, so opening is serialized by a file lock in the instance folder."""
    import fcntl

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    cwd = Path.cwd()
    if os.environ.get("DAGSTER_HOME"):
        home, opener = Path(os.environ["DAGSTER_HOME"]), dg.DagsterInstance.get
    elif (cwd / "dagster.yaml").exists():
        home = cwd / ".dagster_home"
        opener = lambda: dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(cwd)))  # noqa: E731
    else:
        from nx_dagster.storage.catalog import home_from_env

        home = Path(home_from_env()).expanduser().resolve() / ".dagster"
        opener = lambda: dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))  # noqa: E731
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".nxd-open.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            instance = opener()
            instance.get_runs(limit=1)  # create the run and schedule storage while the lock is held
            instance.all_instigator_state()
            return instance
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _resource(args):
    from assets.resources import NxResource

    return NxResource(home=args.home or "", model=args.model or "", corpus=args.corpus or "",
                      max_sequences=args.max_sequences or 0, device=args.device, dtype=args.dtype,
                      batch_size=args.batch_size, seq_len=args.seq_len)


def cmd_run(args) -> int:
    import dagster as dg

    from assets.definitions import defs
    from nx_dagster.corpus.sequences import iter_sequence_batches, token_strings
    from nx_dagster.model.gelu import parse_variants
    from nx_dagster.ranges import contiguous_runs, parse_ranges

    stages = [s.strip() for s in (args.stages or ",".join(STAGES)).split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            raise _input_error(f"stage {s!r}", "is not a stage", f"use some of {', '.join(STAGES)}")
    variants = parse_variants(args.variants)
    nx = _resource(args)
    # Validate every input before anything runs, so bad input changes no table.
    nx.catalog.check_writable()
    subject = nx.subject
    cfg = subject.ckpt.config
    layer_list = parse_ranges(args.layers, "layers", cfg.n_layer) or list(range(cfg.n_layer))
    neurons = parse_ranges(args.neurons, "neurons", cfg.n_neurons)
    if neurons and len(contiguous_runs(neurons)) > 1:
        raise _input_error(f"neurons {args.neurons!r}", "is not one contiguous range", "use a range like 0-511")
    tok = subject.ckpt.load_tokenizer()
    next(iter_sequence_batches(subject.corpus, tok, subject.name, token_strings(tok), batch_rows=1))

    definitions = defs()
    all_assets = list(definitions.assets)
    instance = _instance()
    from nx_dagster import runs

    runs.sweep(instance)  # a killed earlier run must not hold its pool slot: fail it, free its slots
    worker = runs.worker_tags()
    llm = definitions.resources["llm"].model_copy(update={
        k: v for k, v in (("explainer", args.explainer), ("simulator", args.simulator),
                          ("explainer_model", args.explainer_model), ("simulator_model", args.simulator_model)) if v})
    llm.explainer_name, llm.simulator_name  # noqa: B018  (validates the choices before anything runs)
    resources = {"nx": nx, "llm": llm}
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

    def run(selection: list[str], **kw) -> None:
        label = ", ".join(selection) + (f" (layers {kw['tags']['dagster/asset_partition_range_start']}-"
                                        f"{kw['tags']['dagster/asset_partition_range_end']})" if "tags" in kw else "")
        print(f"nxd: materializing {label}", file=sys.stderr, flush=True)
        result = dg.materialize(all_assets, selection=selection, instance=instance, resources=resources,
                                run_config=kw.pop("run_config", run_config), raise_on_error=False,
                                tags={**worker, **kw.pop("tags", {})}, **kw)
        if not result.success:
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
        from nx_dagster.storage import output

        try:
            cat._retry(lambda: output.write(rel, args.format, args.max_rows))
        except ValueError as e:
            raise _input_error(f"query {args.query!r}", str(e), "alias the duplicate columns, or use --format table") from None
    return 0


def cmd_gc(args) -> int:
    from nx_dagster.storage import Catalog
    from nx_dagster.storage.cleanup import collect

    cat = Catalog(args.home or None)
    if not cat.catalog_path.is_file():
        raise _input_error(f"NX_HOME {str(cat.home)!r}", "holds no catalog", "point NX_HOME (or --home) at a data root")
    found = collect(cat, apply=args.apply)
    for path, size in found:
        print(f"{'removed' if args.apply else 'would remove'} {path} ({size:,} bytes)")
    total = sum(size for _, size in found)
    verb = "removed" if args.apply else "can be removed (run with --apply)"
    print(f"nxd: {len(found)} unreferenced files/folders, {total:,} bytes {verb}", file=sys.stderr)
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
    r.add_argument("--max-sequences", type=int, default=0, help="use only the first N sequences")
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
    g = sub.add_parser("gc", help="list (or --apply: remove) files under NX_HOME that no snapshot references")
    g.add_argument("--home", help="NX_HOME (default ./nx_data)")
    g.add_argument("--apply", action="store_true", help="remove them (default: only list them)")
    g.set_defaults(fn=cmd_gc)
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
