"""Long stages report progress: counts, rate and time left while they run, the time taken at the end."""

import re

from nx_dagster.activations import RecorderSettings
from nx_dagster.corpus import CorpusSpec
from nx_dagster.model import open_checkpoint
from nx_dagster.stages.activations import progress, write_activations, write_sequences
from nx_dagster.subject import Subject
from nx_dagster.stages.explain import write_explanations, write_scores
from nx_dagster.storage import Catalog
from tests.checkpoints import build_checkpoint

LINE = re.compile(r"^(?P<label>.+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"[\d,]+ (?P=unit)/s(, (?P<left>[\d,]+) s left|, [\d.,]+ s)$")


def test_progress_lines_have_count_rate_and_time_left():
    lines: list[str] = []
    on = progress("work", 300, lines.append, every_s=0.0, unit="neurons")
    for done in (100, 200, 300):
        on(0, done)
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    assert [p["left"] is not None for p in parsed] == [True, True, False]  # the last line: time taken
    assert [int(p["pct"]) for p in parsed] == [33, 67, 100]


def test_offline_explain_and_score_stages_report_progress(tmp_path):
    ckpt = open_checkpoint(str(build_checkpoint(tmp_path / "ck", n_layer=2, n_embd=32, n_head=4)))
    (tmp_path / "c.txt").write_text("The cat sat on the mat; the dog did not. Paris is in France. " * 40)
    s = Subject(ckpt, CorpusSpec(str(tmp_path / "c.txt"), 16))
    cat = Catalog(tmp_path / "home")
    write_sequences(cat, s)
    write_activations(cat, s, ["post_fix"], [0, 1], RecorderSettings(top_k=5, random_k=4, quantile_k=1))
    lines: list[str] = []
    write_explanations(cat, s.name, s.corpus.name, "post_fix", [0, 1], None, "token_lookup", None, report=lines.append)
    write_scores(cat, s.name, s.corpus.name, "post_fix", "post_fix", [0, 1], None, "token_lookup", "token_lookup",
                 None, report=lines.append)
    for label in ("post_fix explanations (token_lookup)", "post_fix explanations on post_fix (token_lookup)"):
        mine = [m for m in map(LINE.match, lines) if m and m["label"] == label]
        assert len(mine) >= 10 and all(m["unit"] == "neurons" for m in mine), (label, lines)
        assert all(m["left"] is not None for m in mine[:-1]) and mine[-1]["pct"] == "100"
        assert mine[-1]["done"] == mine[-1]["total"] == f"{2 * ckpt.config.n_neurons:,}"
    assert any("records loaded in" in ln for ln in lines)
