from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
import tomllib

from deepedge.config import Config, ConfigError, LcApp, load_config, render_json, render_toml
from deepedge.errors import ExitCode


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "deepedge.toml"
    p.write_text(text)
    return p


def test_defaults_without_any_file(tmp_path: Path) -> None:
    loaded = load_config(environ={}, overrides={})
    assert loaded.config.broker.url == "mqtt://127.0.0.1:1883"
    assert loaded.config.node.telemetry_interval_s == 1.0
    assert loaded.source_of("broker.url") == "default"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        '[broker]\nurl = "mqtt://file:1"\nkeepalive_s = 20\n[cluster]\nname = "from-file"\n'
        '[node]\ntelemetry_interval_s = 0.5\n[[node.lc_apps]]\nname = "det"\ndeadline_ms = 50\n',
    )
    env = {"DEEPEDGE_BROKER_URL": "mqtt://env:2", "DEEPEDGE_CLUSTER_NAME": "from-env"}
    loaded = load_config(f, environ=env, overrides={"cluster.name": "from-flag", "log.level": None})
    c = loaded.config
    assert c.broker.url == "mqtt://env:2" and c.broker.port == 2
    assert c.broker.keepalive_s == 20
    assert c.cluster.name == "from-flag"
    assert c.node.telemetry_interval_s == 0.5
    assert c.node.lc_apps == (LcApp(name="det", deadline_ms=50.0),)
    assert loaded.source_of("broker.url") == "env DEEPEDGE_BROKER_URL"
    assert loaded.source_of("cluster.name") == "flag"
    assert loaded.source_of("broker.keepalive_s") == f"file {f}"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    f = write(tmp_path, '[cluster]\nname = "viaenv"\n')
    assert load_config(environ={"DEEPEDGE_CONFIG": str(f)}).config.cluster.name == "viaenv"


def test_env_strings_are_converted() -> None:
    c = load_config(environ={"DEEPEDGE_BROKER_KEEPALIVE_S": "30", "DEEPEDGE_NODE_TELEMETRY_INTERVAL_S": "2.5"}).config
    assert c.broker.keepalive_s == 30 and c.node.telemetry_interval_s == 2.5


def test_tls_url() -> None:
    b = load_config(environ={"DEEPEDGE_BROKER_URL": "mqtts://broker.lan"}).config.broker
    assert b.tls and b.port == 8883 and b.host == "broker.lan"


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[broker]\nkeepalive_s = 'often'\n", {}, "broker.keepalive_s"),
        ("[broker]\nurl = 'http://x'\n", {}, "mqtt://HOST"),
        ("[broker]\nurll = 'mqtt://x'\n", {}, "urll"),
        ("[nodes]\nid = 'x'\n", {}, "unknown section [nodes]"),
        ("this is not toml", {}, "not valid TOML"),
        ("", {"DEEPEDGE_BROKER_KEEPALIVE_S": "abc"}, "env DEEPEDGE_BROKER_KEEPALIVE_S"),
        ("", {"DEEPEDGE_BROKR_URL": "mqtt://x"}, "unknown environment variable DEEPEDGE_BROKR_URL"),
        ("[cluster]\nname = 'bad/name'\n", {}, "cluster.name"),
        ("[node]\ntelemetry_interval_s = 0\n", {}, "node.telemetry_interval_s"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, env: dict[str, str], needle: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(f, environ=env)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
    assert err.value.exit_code is ExitCode.CONFIG


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_show_masks_secrets_and_round_trips(tmp_path: Path) -> None:
    f = write(
        tmp_path, '[broker]\npassword = "hunter2"\nusername = "edge"\n[[node.lc_apps]]\nname = "a"\ndeadline_ms = 9\n'
    )
    loaded = load_config(f, environ={})
    toml_text = render_toml(loaded)
    assert "hunter2" not in toml_text and "hunter2" not in render_json(loaded)
    assert "********" in toml_text
    again = load_config(write(tmp_path, toml_text), environ={}).config
    assert again.node.lc_apps == loaded.config.node.lc_apps
    assert again.broker.username == "edge"


def test_a_directory_as_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^config file {tmp_path} is a directory, not a file$"):
        load_config(tmp_path, environ={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(environ={"DEEPEDGE_CONFIG": str(tmp_path)})


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes('[cluster]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(invalid continuation byte at byte 21\)$"):
        load_config(f, environ={})


def test_a_config_file_that_cannot_be_read_is_one_line() -> None:
    # /proc/self/mem opens but its first bytes are not mapped: reading fails (EIO), even as root
    with pytest.raises(ConfigError) as err:
        load_config("/proc/self/mem", environ={})
    assert str(err.value) == "config file /proc/self/mem cannot be read: Input/output error"
    assert err.value.exit_code is ExitCode.CONFIG


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_config_file_without_read_permission_is_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, "")
    f.chmod(0)
    with pytest.raises(ConfigError, match="is not readable"):
        load_config(f, environ={})


def test_json_keeps_every_keys_source(tmp_path: Path) -> None:
    f = write(tmp_path, '[broker]\nkeepalive_s = 20\n[[node.lc_apps]]\nname = "a"\ndeadline_ms = 9\n')
    loaded = load_config(f, environ={"DEEPEDGE_BROKER_USERNAME": "edge"}, overrides={"cluster.name": "lab"})
    data = json.loads(render_json(loaded))
    assert data["cluster"] == {"name": "lab"} and data["broker"]["keepalive_s"] == 20
    assert data["sources"]["cluster.name"] == "flag"
    assert data["sources"]["broker.username"] == "env DEEPEDGE_BROKER_USERNAME"
    assert data["sources"]["broker.keepalive_s"] == f"file {f}"
    assert data["sources"]["node.lc_apps"] == f"file {f}"
    assert data["sources"]["broker.url"] == "default"
    assert set(data["sources"]) == {f"{s}.{k}" for s, keys in model_keys().items() for k in keys}
    assert data["config_file"] == str(f)


# ---- every key documented -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "deepedge.toml.example"
# The example shows a board of a secure cluster: these keys are not at their defaults there.
EXAMPLE_IDENTITY = {"cluster.name", "broker.url", "broker.username", "broker.password", "broker.ca_file", "node.id"}


def model_keys() -> dict[str, tuple[str, ...]]:
    """Every section of the config model with its keys."""
    return {section: type(getattr(Config(), section)).__struct_fields__ for section in Config.__struct_fields__}


def test_every_config_key_is_in_the_configuration_doc() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"{s}.{k}" for s, keys in model_keys().items() for k in keys if f"`{s}.{k}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_the_example_config_has_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    missing = [f"{s}.{k}" for s, keys in model_keys().items() for k in keys if k not in data.get(s, {})]
    assert not missing, f"deploy/deepedge.toml.example lacks: {', '.join(missing)}"


def test_the_example_configs_values_are_the_defaults() -> None:
    shown = msgspec.to_builtins(load_config(EXAMPLE, environ={}).config)
    defaults = msgspec.to_builtins(Config())
    differ = [
        f"{s}.{k} = {shown[s][k]!r} (default {defaults[s][k]!r})"
        for s, keys in model_keys().items()
        for k in keys
        if shown[s][k] != defaults[s][k] and f"{s}.{k}" not in EXAMPLE_IDENTITY
    ]
    assert not differ, f"deploy/deepedge.toml.example is not at the defaults: {'; '.join(differ)}"


def test_the_doc_check_names_what_is_missing() -> None:
    # (the check above fails, naming the key, for a key that is in the model only)
    def undocumented(text: str) -> set[str]:
        return {f"{s}.{k}" for s, keys in model_keys().items() for k in keys if f"`{s}.{k}`" not in text}

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert undocumented(text.replace("`node.max_workers`", "max_workers")) - undocumented(text) == {"node.max_workers"}


def test_a_setting_of_fixed_values_names_them_when_given_another() -> None:
    """(a new operator's review, 2026-12-06) `--log-level verbose` said only "Invalid enum value"."""
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides={"log.level": "verbose"})
    assert str(err.value) == (
        "bad configuration (flag): Invalid enum value 'verbose' (one of: debug, error, info, warning) - at log.level"
    )
