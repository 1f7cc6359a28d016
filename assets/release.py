"""The `release` asset: freeze every table into an immutable, named release (nx_dagster/storage/releases.py).

Each materialization is one release; its metadata shows the manifest and the changelog at a glance
(per-table rows, checksums, files, rows added / changed / removed; neurons whose best explanation or
score changed). It depends on every table-producing asset, so the graph shows what a release holds.
"""

import dagster as dg

from assets.metadata import markdown_table
from assets.resources import NxResource
from nx_dagster.storage.releases import create_release

_ACTIVATIONS = ["pre_fix/activations", "post_fix/activations"]
_EXPLAIN = ["pre_fix/explanations", "post_fix/explanations"]
_SCORES = ["pre_fix/scores", "post_fix/scores", "post_fix/scores_of_pre_fix_explanations"]
# table -> the assets that write it (their code versions go into the manifest)
TABLE_PRODUCERS: dict[str, list[str]] = {
    "models": ["model"], "sequences": ["sequences"], "activation_records": _ACTIVATIONS,
    "neuron_stats": _ACTIVATIONS, "token_activation_summary": _ACTIVATIONS, "gelu_fix_impact": ["gelu_fix_impact"],
    "neuron_connections": ["connections"], "token_connections": ["connections"], "explanations": _EXPLAIN,
    "simulations": _SCORES, "scores": _SCORES, "llm_calls": _EXPLAIN + _SCORES,
}
_PRODUCERS = sorted({k for keys in TABLE_PRODUCERS.values() for k in keys})


class ReleaseConfig(dg.Config):
    name: str  # the release's name: new, 1-64 letters, digits, '.', '_' or '-'
    message: str = ""


def _code_versions(instance: dg.DagsterInstance) -> dict[str, dict[str, str]]:
    """table -> {asset: code version of its latest materialization} (assets never materialized are left out)."""
    keys = [dg.AssetKey.from_user_string(k) for k in _PRODUCERS]
    latest = instance.get_latest_materialization_code_versions(keys)
    versions = {k.to_user_string(): v for k, v in latest.items() if v}
    return {t: {a: versions[a] for a in assets if a in versions} for t, assets in TABLE_PRODUCERS.items()}


def release_metadata(row: dict) -> dict:
    """Readable Dagster metadata of a release (`releases` row with the manifest parsed)."""
    m = row["manifest"]
    per_table = [{
        "table": t, "rows": e["rows"], "checksum": e["checksum"], "files": len(e["files"]),
        "added": e["changes"]["added"], "changed": e["changes"]["changed"], "removed": e["changes"]["removed"],
        "gelu_variants": ",".join(e.get("gelu_variants", [])) or "-",
        "code_versions": ", ".join(sorted(set(e["code_versions"].values()))) or "-",
        "last_written_snapshot": e["last_written_snapshot"],
    } for t, e in m["tables"].items()]
    shown = [{k: r[k] for k in ("model", "gelu_variant", "layer", "neuron", "change", "old_explanation", "old_score",
                                "new_explanation", "new_score")} for r in m["changelog"]["neuron_changes"]]
    brief = {k: v for k, v in m.items() if k not in ("tables", "changelog")}
    brief["tables"] = {t: {k: v for k, v in e.items() if k != "files"} | {"files": len(e["files"])}
                       for t, e in m["tables"].items()}
    brief["changelog"] = {k: v for k, v in m["changelog"].items() if k != "neuron_changes"}
    totals = m["totals"]
    return {
        "release": row["release"], "snapshot": row["snapshot"], "parent_release": row["parent_release"] or "-",
        "rows": totals["rows"], "files": totals["files"], "bytes": totals["bytes"],
        "new_files": totals["new_files"], "new_bytes": totals["new_bytes"],
        "tables": dg.MetadataValue.md(markdown_table(per_table)),
        "neurons_changed": m["changelog"]["neurons_changed"],
        "neuron_changes": dg.MetadataValue.md(markdown_table(shown) + (
            f"\n\n(first {len(shown)}; all in `release_neuron_changes WHERE release = '{row['release']}'`)"
            if m["changelog"]["neurons_changed"] > len(shown) else "")),
        "manifest": dg.MetadataValue.json(brief),
        "query": dg.MetadataValue.md(f"`nxd sql --release {row['release']} \"SELECT * FROM scores LIMIT 10\"`"),
    }


@dg.asset(
    key="release", deps=[dg.AssetKey.from_user_string(k) for k in _PRODUCERS], group_name="releases", kinds={"duckdb"},
    description="An immutable, named release of every table: a catalog snapshot, a manifest and a changelog "
                "against the previous release (rows in table `releases`, neuron changes in `release_neuron_changes`).",
)
def release(context: dg.AssetExecutionContext, nx: NxResource, config: ReleaseConfig) -> dg.MaterializeResult:
    row = create_release(nx.catalog, config.name, config.message, _code_versions(context.instance))
    m = row["manifest"]
    context.log.info(f"release {row['release']}: snapshot {row['snapshot']}, parent {row['parent_release']}, "
                     f"{m['totals']['new_files']} new files of {m['totals']['files']}")
    return dg.MaterializeResult(metadata=release_metadata(row), data_version=dg.DataVersion(row["release"]))


RELEASE_ASSETS = [release]
