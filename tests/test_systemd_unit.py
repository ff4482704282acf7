"""The shipped unit is hardened and of Type=notify, and the notify protocol is spoken."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from shadowd import sdnotify

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "shadowd.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}{key}", []).append(value)
    return found


def test_unit_is_notify_with_reload_and_watchdog():
    d = directives()
    assert d["[Service]Type"] == ["notify"]
    assert d["[Service]ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "WatchdogSec" in "".join(d)
    assert d["[Service]ExecStart"][0].endswith("run -c /etc/shadowd/shadowd.toml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "shadowd"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "65536"),
    ],
)
def test_unit_is_hardened(key, value):
    assert directives()[f"[Service]{key}"] == [value]


def test_unit_parses_as_ini():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser.has_section("Service") and parser.has_section("Install")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed on this machine",
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "shadowd.service" in line and "Command /usr/local/bin/shadowd" not in line
    ]
    assert problems == []


def test_notify_sends_one_datagram_to_the_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1\nSTATUS=proxying")
        assert receiver.recv(100) == b"READY=1\nSTATUS=proxying"


def test_notify_reaches_an_abstract_socket(monkeypatch):
    name = f"shadowd-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("WATCHDOG=1")
        assert receiver.recv(100) == b"WATCHDOG=1"


def test_no_notify_socket_means_nothing_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() is None
