"""The one Settings object: read from the environment in one place, documented, validated in one line, and
overridden by explicit values (a `use(...)` block, CLI flags, resource fields) in that order."""

from pathlib import Path

import pytest

from nx_dagster import settings
from nx_dagster.errors import NxInputError
from nx_dagster.storage.location import Location

ROOT = Path(__file__).resolve().parents[1]


def test_docs_list_every_setting_as_generated():
    assert (ROOT / "docs" / "settings.md").read_text() == settings.markdown_table()
    assert all(f"| `{name}` |" in settings.markdown_table() for name in settings.NAMES)


def test_blank_is_unset_and_a_changed_environment_is_read_again(monkeypatch):
    monkeypatch.setenv("NX_HOME", "")
    monkeypatch.setenv("NX_CATALOG_WAIT_S", " ")
    assert settings.current().nx_home == settings.DEFAULT_HOME
    assert settings.current().nx_catalog_wait_s == 600
    monkeypatch.setenv("NX_CATALOG_WAIT_S", "2.5")
    monkeypatch.setenv("NX_COMPILE", "0")
    assert settings.current().nx_catalog_wait_s == 2.5 and settings.current().nx_compile is False


def test_precedence_environment_then_explicit_settings_then_flags_and_fields(tmp_path, monkeypatch):
    from assets.llm import LLMResource
    from assets.resources import NxResource
    from nx_dagster.explain import LLMSettings, default_ledger_path
    from nx_dagster.storage import Catalog

    env_home, cli_home = tmp_path / "env", tmp_path / "flag"
    monkeypatch.setenv("NX_HOME", str(env_home))
    monkeypatch.setenv("NX_EXPLAINER_MODEL", "model-from-env")
    monkeypatch.delenv("NX_LLM_LEDGER", raising=False)
    assert Location.resolve().home == str(env_home)
    assert NxResource().catalog.home == str(env_home)
    assert NxResource(home=str(cli_home)).catalog.home == str(cli_home)  # `nxd run --home` sets this field
    assert LLMSettings.from_env().explainer_model == "model-from-env"
    assert LLMSettings.from_env(explainer_model="flag-model").explainer_model == "flag-model"
    # the ledger's default, in one place: NX_LLM_LEDGER, else the data root's local state folder
    assert default_ledger_path() == env_home / settings.LEDGER_FILE
    llm_settings_home = tmp_path / "explicit"
    with settings.use(settings.current().replace(nx_home=str(llm_settings_home))):
        assert Catalog().home == str(llm_settings_home)  # explicit Settings win over the environment
        assert NxResource(home=str(cli_home)).catalog.home == str(cli_home)  # and a field wins over them
        assert settings.current().nx_explainer_model == "model-from-env"  # the rest stays
        explicit = LLMResource(ledger=str(tmp_path / "l.sqlite")).client(Catalog(), True)
        assert explicit.ledger.path == tmp_path / "l.sqlite"
    assert settings.current().nx_home == str(env_home)  # the block is over
    monkeypatch.setenv("NX_LLM_LEDGER", str(tmp_path / "ledger.sqlite"))
    assert default_ledger_path() == tmp_path / "ledger.sqlite"
    assert LLMResource().client(Catalog(), True).ledger.path == tmp_path / "ledger.sqlite"


def test_from_values_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("NX_HOME", "/somewhere")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-0000")
    s = settings.from_values(nx_model="bundled")
    assert s.nx_home == settings.DEFAULT_HOME and s.openai_api_key is None and s.nx_model == "bundled"
    assert "sk-env-0000" not in repr(settings.current())  # a SecretStr


@pytest.mark.parametrize("var, value, start", [
    ("NX_CATALOG_WAIT_S", "soon", "NX_CATALOG_WAIT_S 'soon': is not a number of seconds >= 0. Fix: set it to e.g. 600"),
    ("NX_LAYERS_PER_RUN", "two", "NX_LAYERS_PER_RUN 'two': is not a positive integer. Fix: "),
    ("NX_RECORDER", "fast", "NX_RECORDER 'fast': input should be 'auto', 'fused', 'torch', 'dense' or 'triton'. Fix: "),
    ("NX_COMPILE", "maybe", "NX_COMPILE 'maybe': "),
])
def test_a_bad_value_is_one_line_naming_the_variable(var, value, start, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(var, value)
    with pytest.raises(NxInputError) as e:
        settings.current()
    assert str(e.value).startswith(start) and "Fix: " in str(e.value) and "\n" not in str(e.value)
    from nxd.cli import main

    assert main(["sql", "--home", str(tmp_path), "SELECT 1"]) == 2
    assert capsys.readouterr().err == f"nxd: error: {e.value}\n"
