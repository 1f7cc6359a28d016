"""The explain and score assets end to end over real HTTP (the real openai client and a local
OpenAI-compatible server), in both lineages; a rerun pays for nothing and duplicates nothing."""

import dagster as dg

from assets.definitions import defs
from assets.llm import LLMResource
from assets.resources import NxResource
from nx_dagster.storage import Catalog
from tests.checkpoints import tiny_run_inputs
from tests.llm_server import FakeLLMServer

SECRET = "sk-test-secret-123"


def test_llm_stages_over_http_and_rerun_is_free(tmp_path):
    ckpt, corpus = tiny_run_inputs(tmp_path, 60)
    nx = NxResource(home=str(tmp_path / "home"), model=str(ckpt), corpus=str(corpus), seq_len=16, top_k=8,
                    random_k=6, quantile_k=1)
    instance = dg.DagsterInstance.ephemeral()
    assets = list(defs().assets)
    with FakeLLMServer(api_key=SECRET) as server:
        llm = LLMResource(api_key=SECRET, base_url=server.base_url, explainer="token_activation_pairs",
                          simulator="json_logprobs", explainer_model="m-explain", simulator_model="m-sim")
        res = {"nx": nx, "llm": llm}

        def op(key: str) -> str:  # both lineages' activations are one multi-asset op
            return "activations" if key.endswith("/activations") else key.replace("/", "__")

        def go(selection, **kw):
            r = dg.materialize(assets, selection=selection, instance=instance, resources=res,
                               run_config={"ops": {op(k): {"config": {"neurons": "0-3"}}
                                                   for k in selection if "/" in k}}, **kw)
            assert r.success
            return r

        dg.materialize(assets, selection=["model", "sequences"], instance=instance, resources=res)
        go(["pre_fix/activations", "post_fix/activations"], partition_key="1")
        stages = ["pre_fix/explanations", "post_fix/explanations"]
        scores = ["pre_fix/scores", "post_fix/scores", "post_fix/scores_of_pre_fix_explanations"]
        go(stages, partition_key="1")
        r = go(scores, partition_key="1")
        sent = server.count()
        assert sent > 0
        cat = Catalog(nx.home)
        counts = {t: cat.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py()
                  for t in ("explanations", "simulations", "scores", "llm_calls")}
        assert counts["explanations"] == 8 and counts["scores"] == 12
        assert counts["llm_calls"] == cat.query("SELECT count(DISTINCT call_key) FROM llm_calls").column(0)[0].as_py()
        assert counts["llm_calls"] == sent  # one ledger row per request sent (no faults injected)
        lineages = cat.query("SELECT DISTINCT explanation_gelu_variant, gelu_variant FROM scores ORDER BY ALL").to_pylist()
        assert lineages == [{"explanation_gelu_variant": "post_fix", "gelu_variant": "post_fix"},
                            {"explanation_gelu_variant": "pre_fix", "gelu_variant": "post_fix"},
                            {"explanation_gelu_variant": "pre_fix", "gelu_variant": "pre_fix"}]
        ok = cat.query("SELECT count(*) FROM scores WHERE ev_correlation IS NOT NULL").column(0)[0].as_py()
        assert ok >= 6
        mat = r.asset_materializations_for_node("post_fix__scores_of_pre_fix_explanations")[0]
        assert "pre_vs_post" in mat.metadata and "llm_session_requests_sent" in mat.metadata
        go(stages, partition_key="1")  # rerun: answered from the ledger, same tables
        go(scores, partition_key="1")
        assert server.count() == sent
        assert counts == {t: cat.query(f"SELECT count(*) FROM {t}").column(0)[0].as_py() for t in counts}
        dumped = cat.query("SELECT * FROM llm_calls").to_pylist()
        assert SECRET not in repr(dumped)
        assert SECRET not in repr(mat.metadata)
