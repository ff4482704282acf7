"""The ingress's read deadlines (head, body) are read from the config file and validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowd.cli import main
from shadowd.config import IngressConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (
    '[targets.primary]\nurl = "http://127.0.0.1:9001"\n'
    '[targets.candidate]\nurl = "http://127.0.0.1:9003"\n'
)


def test_header_timeout_defaults_to_60s_and_is_read_from_the_file(tmp_path):
    assert IngressConfig().header_timeout == 60.0
    path = tmp_path / "shadowd.toml"
    path.write_text('[ingress]\nheader_timeout = "2500ms"\n' + TARGETS)
    assert load_config(path).ingress.header_timeout == 2.5


def test_body_timeout_defaults_to_60s_like_nginx_and_is_read_from_the_file(tmp_path):
    assert IngressConfig().body_timeout == 60.0  # nginx's client_body_timeout
    path = tmp_path / "shadowd.toml"
    path.write_text('[ingress]\nbody_timeout = "90s"\n' + TARGETS)
    assert load_config(path).ingress.body_timeout == 90.0


@pytest.mark.parametrize("value", ["0", "-1", "nan", '"soon"', "true"])
def test_a_bad_body_timeout_is_refused_with_one_line_naming_the_key(tmp_path, capsys, value):
    path = tmp_path / "shadowd.toml"
    path.write_text(f"[ingress]\nbody_timeout = {value}\n" + TARGETS)
    assert main(["check-config", str(path)]) != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{path}: ingress.body_timeout: ")


def test_the_example_file_sets_them():
    config = load_config(ROOT / "config" / "shadowd.example.toml")
    assert config.ingress.header_timeout == 60.0
    assert config.ingress.body_timeout == 60.0
