"""The library stands on its own: with `dagster`, `assets` and `nxd` made unimportable, every module of
`nx_dagster` imports, and a few library calls record, explain and score neurons into a catalog."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = textwrap.dedent("""
    import importlib, pkgutil, sys

    class Refuse:
        # a meta path finder that makes the application layers unimportable
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("dagster", "assets", "nxd") or name.startswith("dagster_"):
                raise ImportError(f"the library imported {name}")
            return None

    sys.meta_path.insert(0, Refuse())

    import nx_dagster
    modules = [m.name for m in pkgutil.walk_packages(nx_dagster.__path__, "nx_dagster.")]
    for name in modules:
        importlib.import_module(name)

    from nx_dagster.activations import RecorderSettings
    from nx_dagster.corpus import CorpusSpec
    from nx_dagster.model import open_checkpoint
    from nx_dagster.stages.activations import write_activations, write_model, write_sequences
    from nx_dagster.stages.explain import write_explanations, write_scores
    from nx_dagster.storage import Catalog
    from nx_dagster.subject import Subject

    catalog = Catalog(sys.argv[1])
    s = Subject(open_checkpoint(None), CorpusSpec(None, 16, 48), "cpu")
    write_model(catalog, s)
    write_sequences(catalog, s)
    write_activations(catalog, s, ["post_fix"], [0], RecorderSettings(4, 4, 2, 0, 16))
    neurons = range(0, 8)
    write_explanations(catalog, s.name, s.corpus.name, "post_fix", [0], neurons, "token_lookup", None)
    write_scores(catalog, s.name, s.corpus.name, "post_fix", "post_fix", [0], neurons, "token_lookup",
                 "token_lookup", None)
    n = catalog.query("SELECT count(*) AS n, count(ev_correlation) AS scored FROM scores").to_pylist()[0]
    print(len(modules), n["n"], n["scored"], "dagster" in sys.modules)
""")


def test_library_works_without_dagster(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "root")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    n_modules, n_scores, n_scored, dagster_loaded = out.stdout.split()
    assert int(n_modules) > 50  # every module of the library was imported
    assert int(n_scores) == 8 and int(n_scored) > 0  # eight neurons explained and scored
    assert dagster_loaded == "False"
