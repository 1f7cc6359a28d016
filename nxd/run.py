"""`nxd run` (materialize stages through the Dagster instance) and `nxd retry` (re-execute a failed or
killed run from its failure)."""

from __future__ import annotations

import sys

from nx_dagster.vocab import (
    DETECTION, EXPLAINERS, FUZZING, GELU_VARIANTS, INTRUDER, JUDGES, POST_FIX, PRE_FIX, SCORERS, SIMULATION, SIMULATORS,
    TOKEN_LOOKUP,
)

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
                                     ("judge", args.judge), ("judge_model", args.judge_model),
                                     ("ledger", args.ledger)) if v})
    if getattr(args, "null_fraction", None) is not None:
        fields["null_fraction"] = args.null_fraction
    return LLMResource(**fields)


def cmd_run(args) -> int:
    from assets.definitions import defs
    from assets.runtime.instance import open_instance
    from nx_dagster.model.gelu import parse_variants
    from nx_dagster.ranges import contiguous_runs, parse_ranges

    stages = [s.strip() for s in (args.stages or ",".join(STAGES)).split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            raise _input_error(f"stage {s!r}", "is not a stage", f"use some of {', '.join(STAGES)}")
    variants = parse_variants(args.variants)
    scorers = [s.strip() for s in (args.scorers or ",".join(SCORERS)).split(",") if s.strip()]
    for s in scorers:
        if s not in SCORERS:
            raise _input_error(f"scorer {s!r}", "is not a scorer", f"use some of {', '.join(SCORERS)}")
    definitions = defs()
    all_assets = list(definitions.assets)
    llm = _llm_resource(args, definitions.resources["llm"])
    llm.explainer_name, llm.simulator_name, llm.judge_name, llm.checked_null_fraction()  # noqa: B018  (validated first)
    nx = _resource(args)
    # Validate every input before anything runs, so bad input changes no table.
    print("nxd: checking the checkpoint and the corpus", file=sys.stderr, flush=True)
    nx.validate()
    cfg = nx.subject.ckpt.config
    layer_list = parse_ranges(args.layers, "layers", cfg.n_layer) or list(range(cfg.n_layer))
    neurons = parse_ranges(args.neurons, "neurons", cfg.n_neurons)
    if neurons and len(contiguous_runs(neurons)) > 1:
        raise _input_error(f"neurons {args.neurons!r}", "is not one contiguous range", "use a range like 0-511")

    instance = open_instance(nx.catalog)
    from assets.runtime import runs

    runs.sweep(instance)  # a killed earlier run must not hold its pool slot: fail it, free its slots
    resources = {"nx": nx, "llm": llm}
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

    def run(selection: list[str], **kw) -> None:
        materialize(instance, all_assets, resources, selection, kw.pop("run_config", run_config), **kw)

    with runs.Heartbeat(instance):  # stamps our runs; gives back the slots of workers that die meanwhile
        if "activations" in stages:
            run(["model", "sequences"])
            cfgs = dict(run_config)
            if neurons:
                cfgs["ops"] = {"activations": {"config": {"neurons": f"{neurons[0]}-{neurons[-1]}"}}}
            # one pass over the corpus per layer range: every variant, and the fix impact (all layers) in the first
            fix = ["gelu_fix_impact"] if set(variants) == set(GELU_VARIANTS) else []
            for i, rng in enumerate(contiguous_runs(layer_list)):
                run([f"{v}/activations" for v in variants] + (fix if i == 0 else []), run_config=cfgs,
                    tags={"dagster/asset_partition_range_start": str(rng.start),
                          "dagster/asset_partition_range_end": str(rng.stop - 1)})
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
            per_layers(score_assets(scorers, variants))
    return 0


def materialize(instance, assets: list, resources: dict, selection: list[str], run_config: dict, **kw):
    """Run the assets of `selection` through `instance` in this process, as `nxd_run`, tagged so that
    `nxd retry` can rebuild it; a failure the user can fix is the usual one line, any other names the run.
    Returns Dagster's result."""
    import dagster as dg

    from assets.console import console_logger
    from assets.runtime import runs
    from assets.runtime.retry import run_tag

    label = ", ".join(selection) + (f" (layers {kw['tags']['dagster/asset_partition_range_start']}-"
                                    f"{kw['tags']['dagster/asset_partition_range_end']})" if "tags" in kw else "")
    print(f"nxd: materializing {label}", file=sys.stderr, flush=True)
    job = dg.Definitions(jobs=[dg.define_asset_job("nxd_run", selection=selection)], assets=assets,
                         resources=resources, loggers={"console": console_logger}).resolve_job_def("nxd_run")
    # `nx/run` (the selection and settings) lets `nxd retry` rebuild this job for a re-execution
    tags = {**runs.worker_tags(), **run_tag(selection, resources["nx"], resources["llm"]), **kw.pop("tags", {})}
    runs.ensure_pools(instance, runs.pools_of(job))  # not created inside the run: see runs.ensure_pools
    result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False, tags=tags, **kw)
    if not result.success:
        error = input_error_of(result)
        if error is not None:  # a failure the user can fix: the usual one line
            raise error
        raise SystemExit(f"nxd: run {result.run_id} failed ({label}); see the Dagster UI or the log above; "
                         f"`nxd retry {result.run_id}` re-executes it from its failure")
    print(f"nxd: done {label} (run {result.run_id})", file=sys.stderr, flush=True)
    return result


def cmd_check_method(args) -> int:
    """Materialize `method_check` with the flags' methods; print its report; exit 1 when the set-up did not
    recover every planted neuron or score it above its null."""
    from assets.definitions import defs
    from assets.resources import NxResource
    from assets.runtime import runs
    from assets.runtime.instance import open_instance
    from nx_dagster.stages.method_check import SEQUENCES

    if args.random < 0:
        raise _input_error(f"--random {args.random}", "is negative", "give 0 or more random neurons (default 20)")
    if args.sequences is not None and args.sequences < 100:
        raise _input_error(f"--sequences {args.sequences}", "is too few to find every planted token's records",
                           "give 100 or more (default 2000)")
    nx = NxResource(home=args.home)
    nx.catalog.check_writable()
    definitions = defs()
    llm = _llm_resource(args, definitions.resources["llm"])
    llm.explainer_name, llm.simulator_name, llm.judge_name  # noqa: B018  (validated before anything runs)
    instance = open_instance(nx.catalog)
    runs.sweep(instance)
    config = {"loggers": {"console": {"config": {"log_level": "INFO"}}},
              "ops": {"method_check": {"config": {"n_random": args.random, "sequences": args.sequences or SEQUENCES}}}}
    with runs.Heartbeat(instance):
        result = materialize(instance, list(definitions.assets), {"nx": nx, "llm": llm}, ["method_check"], config)
    check_id = result.asset_materializations_for_node("method_check")[0].metadata["check_id"].value
    table = nx.catalog.query("SELECT * FROM method_checks WHERE check_id = ? ORDER BY scorer", [check_id])
    rows = table.to_pylist()
    first = rows[0]
    print(f"method check {check_id}: explainer {first['explainer']}, simulator {first['simulator']}, "
          f"judge {first['judge']} ({first['n_recovered']}/{first['n_planted']} planted meanings recovered, "
          f"{first['llm_calls']} LLM calls, {first['prompt_tokens']} + {first['completion_tokens']} tokens, "
          f"${first['cost_usd_per_neuron']:.6f} per neuron, {first['seconds']:.1f} s)")
    for r in rows:
        def f(v):
            return "-" if v is None else f"{v:.3f}"
        print(f"  {r['scorer']:10s} planted {f(r['planted_mean'])} (null {f(r['planted_null_mean'])}, above null "
              f"{f(r['planted_above_null'])})  random {f(r['random_mean'])} (null {f(r['random_null_mean'])}, "
              f"above null {f(r['random_above_null'])})  {'pass' if r['passed'] else 'FAIL'}")
    if all(r["passed"] for r in rows):
        return 0
    print("nxd: the method set-up failed its known-answer check: see the rows above (table method_checks); "
          "try another model or method before paying for a whole layer", file=sys.stderr)
    return 1


def score_assets(scorers: list[str], variants: list[str]) -> list[str]:
    """The assets of the `scores` stage for these scorers and variants (the cross-lineage ones when both
    variants are chosen)."""
    both = set(variants) == set(GELU_VARIANTS)
    out = []
    if SIMULATION in scorers:
        out += [f"{v}/scores" for v in variants] + ([f"{POST_FIX}/scores_of_{PRE_FIX}_explanations"] if both else [])
    if DETECTION in scorers or FUZZING in scorers:
        out += [f"{v}/classification_scores" for v in variants] + \
            ([f"{POST_FIX}/classification_scores_of_{PRE_FIX}_explanations"] if both else [])
    if INTRUDER in scorers:
        out += [f"{v}/intruder_scores" for v in variants]
    return out


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


def cmd_retry(args) -> int:
    from assets.runtime.instance import open_instance
    from assets.resources import NxResource
    from assets.runtime.retry import retry

    catalog = NxResource(home=args.home).catalog
    if not catalog.exists():  # nothing to retry, and opening its instance would create a data root
        raise _input_error(f"NX_HOME {catalog.home!r}", "holds no catalog, so no runs",
                           "point NX_HOME (or --home) at the data root the run wrote")
    instance = open_instance(catalog)
    failed = 0
    for run_id in args.run_ids:
        print(f"nxd: retrying run {run_id} from its failure", file=sys.stderr, flush=True)
        result = retry(instance, run_id)
        if result.success:
            print(f"nxd: done: run {result.run_id} re-executed {run_id}", file=sys.stderr, flush=True)
            continue
        error = input_error_of(result)
        if error is not None:
            raise error
        print(f"nxd: run {result.run_id} (a retry of {run_id}) failed; see the Dagster UI or the log above",
              file=sys.stderr, flush=True)
        failed += 1
    return 1 if failed else 0


def _llm_flags(p) -> None:
    """The flags that choose the LLM methods, their models and the ledger."""
    p.add_argument("--explainer", help=f"auto (LLM if OPENAI_API_KEY is set, else {TOKEN_LOOKUP}), "
                                       f"{', '.join(EXPLAINERS)}")
    p.add_argument("--simulator", help=f"auto, {', '.join(SIMULATORS)}")
    p.add_argument("--judge", help=f"who answers detection, fuzzing and intruder questions: auto (LLM if "
                                   f"OPENAI_API_KEY is set, else {TOKEN_LOOKUP}), {', '.join(JUDGES)}")
    p.add_argument("--explainer-model", help="chat model for explanations (NX_EXPLAINER_MODEL)")
    p.add_argument("--simulator-model", help="model for simulations (NX_SIMULATOR_MODEL)")
    p.add_argument("--judge-model", help="chat model for the judges (NX_JUDGE_MODEL; default the simulator's)")
    p.add_argument("--ledger", help="NX_LLM_LEDGER: the LLM call ledger file (default NX_HOME/llm_ledger.sqlite)")


def add_run_commands(sub) -> None:
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
    r.add_argument("--seq-len", type=int, default=64)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    _llm_flags(r)
    r.add_argument("--scorers", help=f"comma list of {','.join(SCORERS)} for the scores stage (default: all)")
    r.add_argument("--null-fraction", type=float, default=None,
                   help="share of neurons scored against a null, another neuron's explanation (default: all with "
                        "offline methods, 0.1 with an LLM: each null costs that scorer's calls once more)")
    r.set_defaults(fn=cmd_run)
    c = sub.add_parser("check-method", help="run the configured explainer, simulator and judge on planted neurons "
                                            "of known meaning; exit 1 when they are not recovered")
    c.add_argument("--home", help="NX_HOME: the data root whose table method_checks gets the report")
    _llm_flags(c)
    c.add_argument("--random", type=int, default=20, help="random neurons beside the 12 planted ones (default 20)")
    c.add_argument("--sequences", type=int, default=None, help="bundled corpus sequences to record (default 2000)")
    c.set_defaults(fn=cmd_check_method)
    t = sub.add_parser("retry", help="re-execute failed or killed runs from their failure (Dagster re-execution)")
    t.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="a run of `nxd run` that failed or was killed")
    t.add_argument("--home", help="NX_HOME (default ./nx_data)")
    t.set_defaults(fn=cmd_retry)
