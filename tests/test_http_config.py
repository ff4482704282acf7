"""The ingress's header-read deadline is read from the config file."""

from __future__ import annotations

from pathlib import Path

from shadowd.config import IngressConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_header_timeout_defaults_to_60s_and_is_read_from_the_file(tmp_path):
    assert IngressConfig().header_timeout == 60.0
    path = tmp_path / "shadowd.toml"
    path.write_text(
        '[ingress]\nheader_timeout = "2500ms"\n'
        '[targets.primary]\nurl = "http://127.0.0.1:9001"\n'
        '[targets.candidate]\nurl = "http://127.0.0.1:9003"\n'
    )
    assert load_config(path).ingress.header_timeout == 2.5


def test_the_example_file_sets_it():
    config = load_config(ROOT / "config" / "shadowd.example.toml")
    assert config.ingress.header_timeout == 60.0
