"""Settings: flags > MLSHARP_* environment > config file (YAML/JSON/TOML) > defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlsharp.config import MASK, Settings, parse_rate
from mlsharp.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("MLSHARP_"):
            monkeypatch.delenv(name)


def test_defaults_are_safe():
    """Out of the box: loopback only, no keys, bounded uploads and queue."""
    settings = Settings.load()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.api_keys == []
    assert settings.webhook_allow_private is False
    assert 0 < settings.max_upload_bytes <= 256 * 2**20
    assert 0 < settings.max_pixels <= 100_000_000
    assert settings.max_queue > 0
    assert settings.cors_origins == []


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_precedence_flag_over_env_over_file(tmp_path, monkeypatch, suffix):
    """Each layer overrides the one below it, field by field."""
    values = {"port": 9001, "max_queue": 7, "log_format": "json"}
    path = tmp_path / f"settings{suffix}"
    if suffix == ".yaml":
        path.write_text("port: 9001\nmax-queue: 7\nlog_format: json\n")
    elif suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text('port = 9001\nmax_queue = 7\nlog_format = "json"\n')
    monkeypatch.setenv("MLSHARP_MAX_QUEUE", "11")
    monkeypatch.setenv("MLSHARP_API_KEYS", "alpha, beta")

    from_file = Settings.load(path)
    assert from_file.port == 9001  # file
    assert from_file.max_queue == 11  # env beats file
    assert from_file.log_format == "json"
    assert from_file.api_keys == ["alpha", "beta"]  # comma-separated in the environment

    flagged = Settings.load(path, port=9100, max_queue=None)
    assert flagged.port == 9100  # flag beats file
    assert flagged.max_queue == 11  # a flag not given (None) does not override


def test_config_file_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.yml"
    path.write_text("workers: 0\n")
    monkeypatch.setenv("MLSHARP_CONFIG", str(path))
    assert Settings.load().workers == 0


@pytest.mark.parametrize(
    ("content", "suffix", "fragment"),
    [
        ("port: [", ".yaml", "not valid yaml"),
        ("{", ".json", "not valid json"),
        ("bogus_setting: 1\n", ".yaml", "unknown setting 'bogus_setting'"),
        ("- a\n- b\n", ".yaml", "must hold a mapping"),
        ("port: 1\n", ".ini", "use a .yaml"),
        ("port: 70000\n", ".yaml", "invalid setting port"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, content, suffix, fragment):
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        Settings.load(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("MLSHARP_DEVICE", "gpu", "unknown device 'gpu'"),
        ("MLSHARP_PORT", "eighty", "invalid setting port (MLSHARP_PORT)"),
        ("MLSHARP_RATE_LIMIT", "lots", "invalid rate 'lots'"),
        ("MLSHARP_PRESET", "huge", "invalid setting preset"),
        ("MLSHARP_PUBLIC_URL", "maker.example", "must start with http"),
    ],
)
def test_bad_environment_values(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.load()
    assert fragment in str(info.value)


def test_errors_name_where_the_bad_value_came_from(tmp_path, monkeypatch):
    for name in ("MLSHARP_RESOLUTION", "MLSHARP_BATCH_SIZE", "MLSHARP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"^invalid setting resolution \(--resolution\): "):
        Settings.load(None, resolution=700)
    monkeypatch.setenv("MLSHARP_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match=r"^invalid setting batch_size \(MLSHARP_BATCH_SIZE\)"):
        Settings.load(None)
    monkeypatch.delenv("MLSHARP_BATCH_SIZE")
    config = tmp_path / "mlsharp.yaml"
    config.write_text("resolution: 700\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(config)
    message = str(info.value)
    assert message.startswith(f"invalid setting resolution (config file {config}): ")
    assert "use 512, 1024, 1536" in message  # what would be valid


def test_rate_parsing():
    assert parse_rate("30/minute") == (30, 60.0)
    assert parse_rate("5 / s") == (5, 1.0)
    assert parse_rate("100/day") == (100, 86400.0)
    for bad in ("0/minute", "30", "x/minute", "30/week"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert Settings.load(rate_limit="off").rate() is None


def test_masked_hides_keys():
    masked = Settings.load(api_keys=["s3cret"]).masked()
    assert masked["api_keys"] == [MASK]
    assert "s3cret" not in json.dumps(masked)


def test_config_show_cli(tmp_path):
    env = {"MLSHARP_API_KEYS": "topsecret", "MLSHARP_PORT": "8123", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "mlsharp", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["port"] == 8123
    assert "topsecret" not in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mlsharp", "config", "show", "--config", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mlsharp: error: cannot read config file")


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--precision", "tf32"], "precision tf32 needs an NVIDIA GPU"),
        (["--resolution", "1536"], "internal resolution 1536 is not valid for this preset"),
    ],
)
def test_runtime_options_the_device_cannot_run_stop_the_start(
    run_cli, tiny_checkpoint, tmp_path, command, option, fragment
):
    # Before any port is bound or queue connected: one line, exit status 2.
    queue = ["--queue", "redis://127.0.0.1:9/0"] if command == "worker" else []
    result = run_cli(
        command,
        *("--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--device", "cpu"),
        *("--offline", "--data-dir", str(tmp_path / "data"), *queue, *option),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlsharp: error: ") and fragment in lines[0]
