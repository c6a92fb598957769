"""The configuration schema, its annotated example, and the error messages operators see."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from mailledger import config as config_module
from mailledger.cli.main import main
from mailledger.config import ConfigError, Settings, load_settings, masked

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = CONFIG_DIR / "mailledger.example.toml"
DEMO = CONFIG_DIR / "demo.toml"
KEY_LINE = re.compile(r"^(# )?(\w+) = (.*)$")
SECTION_LINE = re.compile(r"^\[([\w.]+)\]$")  # [oauth.google] is a section in a section


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf field of the schema as a path: ("capture", "max_recipients"), …"""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name)


def _example_keys() -> list[tuple[str, str, str, bool]]:
    """(section, key, value, optional) for every ``key = value`` and ``# key = value`` line."""
    found = []
    section = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if heading := SECTION_LINE.match(line):
            section = heading.group(1)
        elif (assignment := KEY_LINE.match(line)) and section:
            optional, key, value = assignment.groups()
            found.append((section, key, value, bool(optional)))
    return found


def test_example_loads() -> None:
    """The annotated example is a valid configuration as shipped."""
    load_settings(EXAMPLE, environ={})


def test_example_documents_every_field() -> None:
    """Every field of every section appears in the example, so it never drifts from the schema."""
    documented = {(*section.split("."), key) for section, key, _, _ in _example_keys()}
    schema = set(_fields(Settings))
    assert all(len(path) == 2 or path[0] in config_module.NESTED_SECTIONS for path in schema)
    assert sorted(".".join(p) for p in schema - documented) == []
    # …and nothing in it is a key the schema does not know (commented keys are not loaded).
    assert sorted(".".join(p) for p in documented - schema) == []


def test_example_documents_each_key_with_a_comment() -> None:
    """Each key line follows a comment line (or another key of the same explained group)."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if KEY_LINE.match(line) and not line.startswith("#"):
            assert lines[number - 1].startswith("#") or KEY_LINE.match(lines[number - 1]), line


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [(s, k, v) for s, k, v, optional in _example_keys() if optional],
)
def test_example_optional_values_are_valid(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    """The commented-out alternatives are valid values too, once switched on."""
    path = tmp_path / "one.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n", encoding="utf-8")
    load_settings(path, environ={})


def test_demo_config() -> None:
    """`make run`'s configuration: SQLite under var/, loopback capture on 2525, console logs."""
    settings = load_settings(DEMO, environ={})
    assert settings.database.url == "sqlite:///var/demo.db"
    assert settings.storage.blob_dir == "var/blobs"
    assert settings.capture.listen == ["127.0.0.1:2525"]
    assert settings.logging.format == "console"


def test_env_overrides_file(tmp_path: Path) -> None:
    """MAILLEDGER_SECTION__KEY beats the file, and is typed by the schema."""
    settings = load_settings(EXAMPLE, environ={"MAILLEDGER_CAPTURE__MAX_RECIPIENTS": "5"})
    assert settings.capture.max_recipients == 5
    assert load_settings(EXAMPLE, environ={}).capture.max_recipients == 100


def test_config_env_names_the_file(tmp_path: Path) -> None:
    """MAILLEDGER_CONFIG is read when no path is given."""
    path = tmp_path / "m.toml"
    path.write_text("[capture]\nmax_recipients = 7\n", encoding="utf-8")
    assert load_settings(None, environ={"MAILLEDGER_CONFIG": str(path)}).capture.max_recipients == 7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[capture]\nmax_recipients = "many"\n', "capture.max_recipients"),
        ("[capture]\nmax_recipents = 5\n", "capture.max_recipents: unknown key"),
        ('[capture]\nlisten = ["nowhere"]\n', "capture.listen"),
        ("[captur]\nlisten = []\n", "captur: unknown key"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """Unknown keys and bad values stop the start with a message naming the key."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(path, environ={})


def test_bad_env_value_names_the_key() -> None:
    """A bad environment override is reported like a bad file value."""
    with pytest.raises(ConfigError, match=r"capture\.max_recipients"):
        load_settings(None, environ={"MAILLEDGER_CAPTURE__MAX_RECIPIENTS": "lots"})


def test_masked_hides_database_password() -> None:
    """check-config never prints a database password."""
    settings = load_settings(
        None, environ={"MAILLEDGER_DATABASE__URL": '"postgresql+psycopg://ml:s3cret@db/ml"'}
    )
    shown = masked(settings)["database"]["url"]
    assert "s3cret" not in shown
    assert shown == "postgresql+psycopg://ml:********@db/ml"


# --- environment variables that are not settings ----------------------------------------------


def test_foreign_variable_is_warned_about_once_and_ignored(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MAILLEDGER_ name without SECTION__KEY (a wrapper's own) warns once; loading goes on."""
    monkeypatch.setattr(config_module, "_WARNED", set())
    environ = {"MAILLEDGER_HOME": "/opt/mailledger", "MAILLEDGER_CAPTURE__MAX_RECIPIENTS": "9"}
    assert load_settings(EXAMPLE, environ=environ).capture.max_recipients == 9
    assert load_settings(EXAMPLE, environ=environ).capture.max_recipients == 9  # a reload
    err = capsys.readouterr().err
    assert err.count("MAILLEDGER_HOME") == 1
    assert err.startswith("mailledger: warning: ignoring MAILLEDGER_HOME: not a setting")
    assert "MAILLEDGER_SECTION__KEY" in err


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("MAILLEDGER_CAPTURE__MAX_RECIPENTS", "capture.max_recipents: unknown key"),
        ("MAILLEDGER_CAPTUR__LISTEN", "captur: unknown key"),
        ("MAILLEDGER_CAPTURE__LISTEN__EXTRA", "named MAILLEDGER_SECTION__KEY"),
        ("MAILLEDGER___LISTEN", "named MAILLEDGER_SECTION__KEY"),
    ],
)
def test_misspelt_override_stays_fatal_and_names_the_variable(name: str, says: str) -> None:
    """A name of the override form that matches no setting is a typo: it stops the load."""
    with pytest.raises(ConfigError, match=re.escape(says)) as raised:
        load_settings(None, environ={name: "3"})
    assert name in str(raised.value)


def test_foreign_variable_does_not_stop_a_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: a command runs (exit 0) beside a foreign MAILLEDGER_ variable."""
    monkeypatch.setattr(config_module, "_WARNED", set())
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n', encoding="utf-8")
    monkeypatch.setenv("MAILLEDGER_DEPLOYED_BY", "ansible")
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    assert main(["--config", str(path), "db", "current"]) == 0
    assert capsys.readouterr().err.count("ignoring MAILLEDGER_DEPLOYED_BY") == 1
    monkeypatch.setenv("MAILLEDGER_DATABASE__URLL", "x")
    assert main(["--config", str(path), "db", "current"]) == 2
    assert "MAILLEDGER_DATABASE__URLL" in capsys.readouterr().err
