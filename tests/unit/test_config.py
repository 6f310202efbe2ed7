"""Tests for mfcd.config: defaults, strict types and ranges, the default and named files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mfcd import config
from mfcd.config import Config
from mfcd.errors import ConfigError

FULL = """\
socket_path = "/tmp/x.sock"
socket_group = ""
socket_mode = "0600"
state_file = "/tmp/state"
log_level = "debug"
ipv4 = true
ipv6 = false
client_timeout = 5
max_request_bytes = 2048
"""


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "/etc/test.conf")
    message = str(info.value)
    assert message.startswith("/etc/test.conf: ")
    return message


def test_empty_file_gives_the_defaults() -> None:
    cfg = config.parse("# nothing set\n")
    assert cfg == Config()
    assert (cfg.socket_path, cfg.socket_mode, cfg.log_level) == (
        "/run/mfcd/mfcd.sock",
        0o660,
        "info",
    )
    assert (cfg.client_timeout, cfg.max_request_bytes) == (30.0, 128 * 1024 * 1024)
    assert cfg.families == (4, 6)


def test_every_setting_is_read() -> None:
    cfg = config.parse(FULL)
    assert cfg == Config(
        socket_path="/tmp/x.sock",
        socket_group="",
        socket_mode=0o600,
        state_file="/tmp/state",
        log_level="debug",
        ipv4=True,
        ipv6=False,
        client_timeout=5.0,
        max_request_bytes=2048,
    )
    assert isinstance(cfg.client_timeout, float)
    assert cfg.families == (4,)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("socket_path = 5", "socket_path must be a str"),
        ('socket_path = ""', "socket_path must not be empty"),
        ("socket_group = false", "socket_group must be a str"),
        ('state_file = ""', "state_file must not be empty"),
        ('state_file = ["a"]', "state_file must be a str"),
        ('log_level = "verbose"', "log_level must be one of"),
        ('log_level = "INFO"', "log_level must be one of"),
        ("log_level = 1", "log_level must be a str"),
        ('ipv4 = "yes"', "ipv4 must be a bool"),
        ("ipv6 = 1", "ipv6 must be a bool"),
        ('client_timeout = "30"', "client_timeout must be a float"),
        ("client_timeout = true", "client_timeout must be a float"),
        ("client_timeout = 0", "client_timeout must be between 0.001 and 3600"),
        ("client_timeout = 3600.5", "client_timeout must be between"),
        ("client_timeout = -1.0", "client_timeout must be between"),
        ("client_timeout = nan", "client_timeout must be between"),
        ("client_timeout = inf", "client_timeout must be between"),
        ("max_request_bytes = 1023", "max_request_bytes must be between 1024 and"),
        ("max_request_bytes = 1073741825", "max_request_bytes must be between"),
        ("max_request_bytes = 4096.0", "max_request_bytes must be a int"),
        ("max_request_bytes = true", "max_request_bytes must be a int"),
        ('max_request_bytes = "4096"', "max_request_bytes must be a int"),
        ("drift_check_interval = 9.9", "drift_check_interval must be 0 (off) or between 10 and"),
        ("drift_check_interval = 1", "drift_check_interval must be 0 (off) or between 10 and"),
        ("drift_check_interval = -1", "drift_check_interval must be 0 (off) or between"),
        ("drift_check_interval = 86401", "drift_check_interval must be 0 (off) or between"),
        ("drift_check_interval = nan", "drift_check_interval must be 0 (off) or between"),
        ('drift_check_interval = "300"', "drift_check_interval must be a float"),
    ],
)
def test_type_and_range_errors(line: str, words: str) -> None:
    assert words in refused(line + "\n")


@pytest.mark.parametrize(
    ("line", "seconds"),
    [
        ("", 300.0),
        ("drift_check_interval = 0", 0.0),
        ("drift_check_interval = 10", 10.0),
        ("drift_check_interval = 86400", 86400.0),
    ],
)
def test_drift_check_interval_is_off_or_10_s_to_a_day(line: str, seconds: float) -> None:
    assert config.parse(line + "\n").drift_check_interval == seconds


@pytest.mark.parametrize(
    ("value", "mode"),
    [('"0660"', 0o660), ('"660"', 0o660), ('"0600"', 0o600), ('"0670"', 0o670), ('"0"', 0)],
)
def test_socket_mode_accepted(value: str, mode: int) -> None:
    assert config.parse(f"socket_mode = {value}\n").socket_mode == mode


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"0666"', "must not give others access"),
        ('"0661"', "must not give others access"),
        ('"0777"', "must not give others access"),
        ('"1660"', "must not give others access"),
        ('"0680"', "must be an octal string"),
        ('"0o660"', "must be an octal string"),
        ('"rw-rw----"', "must be an octal string"),
        ('""', "must be an octal string"),
        ('"٠٦٦٠"', "must be an octal string"),  # Arabic-Indic digits are isdigit()
        ("432", "must be an octal string"),  # 0o660 as a TOML integer
        ("0o660", "must be an octal string"),
    ],
)
def test_socket_mode_rejected(value: str, words: str) -> None:
    assert words in refused(f"socket_mode = {value}\n")


@pytest.mark.parametrize(
    "text", ["sockets = 1\n", "[daemon]\nlog_level = 'info'\n", "Log_Level = 'info'\n"]
)
def test_unknown_settings_are_errors(text: str) -> None:
    assert "unknown setting" in refused(text)


@pytest.mark.parametrize("text", ["log_level = info\n", "ipv4 = true\nipv4 = false\n", "= 1\n"])
def test_bad_toml_is_an_error(text: str) -> None:
    assert "not valid TOML" in refused(text)


def test_both_families_off_is_an_error() -> None:
    assert "enable at least one family" in refused("ipv4 = false\nipv6 = false\n")


def test_missing_default_file_gives_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    assert config.load(None) == Config()


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mfc_daemon.conf"
    path.write_text('log_level = "error"\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    assert config.load(None).log_level == "error"


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(path))


def test_named_file_is_read_and_errors_name_it(tmp_path: Path) -> None:
    path = tmp_path / "mfcd.conf"
    path.write_text(FULL)
    assert config.load(str(path)).socket_mode == 0o600
    path.write_text("ipv6 = 0\n")
    with pytest.raises(ConfigError, match=f"^{path}: "):
        config.load(str(path))


def test_unreadable_or_undecodable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b'socket_group = "gr\xfcn"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path))  # a directory


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"socket_path": "/tmp/s", "log_level": None}, {"socket_path": "/tmp/s"}),
        ({"log_level": "warning"}, {"log_level": "warning"}),
        ({"socket_mode": "0600"}, {"socket_mode": 0o600}),
        ({"client_timeout": 5}, {"client_timeout": 5.0}),
    ],
)
def test_override_checks_and_converts_like_the_file(
    flags: dict[str, Any], expected: dict[str, Any]
) -> None:
    cfg = config.override(Config(), **flags)
    for key, value in expected.items():
        got = getattr(cfg, key)
        assert (got, type(got)) == (value, type(value)), key


def test_override_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="--log-level"):
        config.override(Config(), log_level="loud")


def test_on_config_error_is_skip_file_or_refuse() -> None:
    assert Config().on_config_error == "skip_file"
    assert config.parse('on_config_error = "refuse"\n').on_config_error == "refuse"
    assert 'on_config_error must be "skip_file" or "refuse"' in refused(
        'on_config_error = "ignore"\n'
    )
