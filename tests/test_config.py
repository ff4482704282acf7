"""Config files: valid ones load into frozen objects; every problem names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shadowd.config import MIB, ConfigError, Listen, load_config

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[ingress]
mode = "proxy"
listen = "127.0.0.1:8470"

[targets.primary]
url = "http://127.0.0.1:9001"

[targets.secondary]
url = "http://127.0.0.1:9002"

[targets.candidate]
url = "http://127.0.0.1:9003"

[admin]
listen = "127.0.0.1:8471"

[capture]
path = "captures/live.shadow"

[verdict]
min_exchanges = 500
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shadowd.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def with_targets(extra: str) -> str:
    return (
        '[targets.primary]\nurl = "http://127.0.0.1:9001"\n'
        '[targets.candidate]\nurl = "http://127.0.0.1:9003"\n' + extra
    )


def test_example_file_loads():
    config = load_config(ROOT / "config" / "shadowd.example.toml")
    assert config.secondary is not None
    assert config.mirror.methods == frozenset({"GET", "HEAD", "OPTIONS"})
    assert "x-runtime" in config.diff.ignore_headers
    assert "date" in config.diff.ignore_headers


def test_minimal_contract_config_loads_with_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.ingress.listen == Listen("127.0.0.1", 8470)
    assert config.primary.port == 9001
    assert config.primary.timeout == 30.0
    assert config.candidate.timeout == 10.0
    assert config.mirror.sample_rate == 1.0
    assert config.capture is not None and config.capture.path == Path("captures/live.shadow")
    assert config.verdict.min_exchanges == 500
    assert len(config.digest) == 64


def test_config_is_immutable(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mirror.sample_rate = 0.5  # type: ignore[misc]


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    found = problems(tmp_path, with_targets("[mirror]\nsampel_rate = 0.5\n"))
    assert found == [
        f"{tmp_path}/shadowd.toml: mirror.sampel_rate: unknown key (did you mean 'sample_rate'?)"
    ]


def test_unknown_section_is_an_error(tmp_path):
    (found,) = problems(tmp_path, with_targets("[mirorr]\nenabled = true\n"))
    assert ": mirorr: unknown section (did you mean 'mirror'?)" in found


def test_wrong_type_names_the_key(tmp_path):
    (found,) = problems(tmp_path, with_targets('[mirror]\nqueue_size = "lots"\n'))
    assert found.endswith("mirror.queue_size: must be an integer, got a string")


def test_out_of_range_names_the_key(tmp_path):
    (found,) = problems(tmp_path, with_targets("[mirror]\nsample_rate = 1.5\n"))
    assert found.endswith("mirror.sample_rate: must be at most 1, got 1.5")


def test_bad_url_names_the_target(tmp_path):
    found = problems(
        tmp_path,
        '[targets.primary]\nurl = "ftp://x"\n[targets.candidate]\nurl = "http://127.0.0.1:9"\n',
    )
    assert found == [
        f"{tmp_path}/shadowd.toml: targets.primary.url: must be an http:// or https:// URL, "
        "got 'ftp://x'"
    ]


def test_bad_regex_names_the_key(tmp_path):
    (found,) = problems(tmp_path, with_targets('[mirror]\ninclude_paths = ["(unclosed"]\n'))
    assert "mirror.include_paths: item 1: is not a valid regular expression" in found


def test_missing_required_targets_are_reported(tmp_path):
    found = problems(tmp_path, "[mirror]\nenabled = true\n")
    assert any(
        p.endswith("targets.primary: is required ([targets.primary] with a url)") for p in found
    )
    assert any("targets.candidate: is required" in p for p in found)


def test_bad_listen_address(tmp_path):
    (found,) = problems(tmp_path, with_targets('[ingress]\nlisten = "8470"\n'))
    assert 'ingress.listen: must be "host:port"' in found


def test_missing_token_file(tmp_path):
    (found,) = problems(tmp_path, with_targets('[admin]\ntoken_file = "/nonexistent/token"\n'))
    assert found.endswith("admin.token_file: no such file: /nonexistent/token")


def test_public_admin_without_token_is_refused(tmp_path):
    (found,) = problems(tmp_path, with_targets('[admin]\nlisten = "0.0.0.0:8471"\n'))
    assert "admin.listen: an admin API on a non-loopback address requires" in found


def test_target_pointing_at_the_ingress_is_a_loop(tmp_path):
    found = problems(
        tmp_path,
        '[ingress]\nlisten = "127.0.0.1:8470"\n[targets.primary]\nurl = "http://127.0.0.1:8470"\n'
        '[targets.candidate]\nurl = "http://127.0.0.1:9003"\n',
    )
    assert any("targets.primary.url: points at shadowd's own ingress" in p for p in found)


def test_toml_syntax_error_gives_the_line(tmp_path):
    (found,) = problems(tmp_path, "[ingress\nmode = 1\n")
    assert "TOML syntax" in found
    assert "line 1" in found


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        '[ingress]\nmode = "sideways"\n[mirror]\nsample_rate = -1\nqueue_size = 0\n'
        '[targets.primary]\nurl = "nope"\n',
    )
    keys = [p.split(": ")[1] for p in found]
    assert keys == [
        "ingress.mode",
        "mirror.sample_rate",
        "mirror.queue_size",
        "targets.primary.url",
        "targets.candidate",
    ]


def test_sizes_and_durations_accept_units(tmp_path):
    config = load_config(
        write(
            tmp_path,
            with_targets(
                '[ingress]\nmax_request_body_bytes = "2MiB"\nmax_header_bytes = "16kB"\n'
                'idle_timeout = "500ms"\n[capture]\npath = "c.shadow"\nmax_age = "5m"\n'
            ),
        )
    )
    assert config.ingress.max_request_body_bytes == 2 * MIB
    assert config.ingress.max_header_bytes == 16_000
    assert config.ingress.idle_timeout == 0.5
    assert config.capture is not None and config.capture.max_age == 300.0


def test_target_url_parts_and_rewrites(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[targets.primary]\nurl = "https://api.example.com/v2/"\n'
            '[targets.candidate]\nurl = "http://127.0.0.1:9003"\nhost_header = "api.example.com"\n'
            'set_headers = { "X-Shadow" = "1" }\nremove_headers = ["X-Debug"]\n',
        )
    )
    assert (config.primary.scheme, config.primary.port, config.primary.base_path) == (
        "https",
        443,
        "/v2",
    )
    assert config.candidate.set_headers == (("X-Shadow", "1"),)
    assert config.candidate.remove_headers == frozenset({"x-debug"})


def test_empty_token_file_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("  \n")
    (found,) = problems(tmp_path, with_targets(f'[admin]\ntoken_file = "{token}"\n'))
    assert found.endswith(f"admin.token_file: {token} is empty: it must hold the bearer token")
