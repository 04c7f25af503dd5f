import pytest

from proxy.accounting.estimate.constants import (
    CONSTANT_NAMES,
    ConstantsTable,
    family_for_model,
    load_shipped_table,
    table_from_settings,
)
from proxy.errors import ConfigError
from proxy.settings import load_settings


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o"),
        ("gpt-4.1", "gpt-4o"),
        ("gpt-4-turbo-preview", "gpt-4"),
        ("gpt-4", "gpt-4"),
        ("gpt-3.5-turbo", "gpt-4"),
        ("my-azure-deployment", "gpt-4o"),
        (None, "gpt-4o"),
    ],
)
def test_the_family_follows_the_tokenizer(model, family):
    assert family_for_model(model) == family


def test_the_shipped_table_has_every_constant_and_few_family_values():
    table = load_shipped_table()

    assert set(table.shared) == set(CONSTANT_NAMES)
    # A family differs only where the recorded runs show it does.
    assert set(table.families) == {"gpt-4"}
    assert set(table.families["gpt-4"]) <= {
        "code_interpreter_tool",
        "code_interpreter_prompt",
        "per_code_interpreter_output",
    }


def test_settings_override_the_table_flat_then_per_family(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        "[estimate]\nbase_prompt = 30\ncode_interpreter_tool = 99\n"
        "[estimate.gpt-4]\nbase_prompt = 31\n"
    )
    shipped = load_shipped_table()

    table = table_from_settings(load_settings({"config": str(path)}, environ={}), shipped)

    assert table.for_model("gpt-4o")["base_prompt"] == 30
    assert table.for_model("gpt-4")["base_prompt"] == 31
    # A flat setting beats the shipped family value too.
    assert table.for_model("gpt-4")["code_interpreter_tool"] == 99
    assert table.for_model("gpt-4o")["file_search_tool"] == shipped.shared["file_search_tool"]
    assert table.version != shipped.version
    assert table_from_settings(load_settings({}, environ={}), shipped).version == shipped.version


def test_the_version_names_the_estimator_and_changes_with_any_constant():
    table = load_shipped_table()
    other = table.overridden({"image_tiles": table.shared["image_tiles"] + 1}, {})

    assert table.version.startswith("runs2-") and len(table.version) <= 32
    assert other.version != table.version
    assert load_shipped_table().version == table.version


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[estimate.gpt-4o]\nbase_promt = 3\n", "unknown estimate constant 'base_promt'"),
        ("[estimate.gpt-4o]\nbase_prompt = -3\n", "estimate.gpt-4o.base_prompt: -3"),
        ("[estimate.gpt-4o]\nbase_prompt = 'x'\n", "estimate.gpt-4o.base_prompt: 'x'"),
    ],
)
def test_a_bad_family_value_is_one_clear_error(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        table_from_settings(load_settings({"config": str(path)}, environ={}))


def test_a_table_lacking_a_constant_is_refused():
    with pytest.raises(ValueError, match="lacks"):
        ConstantsTable({"base_prompt": 1})
