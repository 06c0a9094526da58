"""Bad plugin configs are refused at load: Envoy does not start, and its log has one line from
the filter that names the key. Shipped Envoy configs pass `envoy --mode validate`."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support import envoy as E

GOOD = {"matomo_url": "http://matomo.test/", "id_site": 1}

BAD = [
    ({"id_site": 1}, "matomo_url", "missing field `matomo_url`"),
    ({**GOOD, "matomo_url": "ftp://m/"}, "matomo_url", "http:// or https://"),
    ({"matomo_url": "http://m"}, "id_site", "missing field `id_site`"),
    ({**GOOD, "id_site": 0}, "id_site", "positive integer"),
    ({**GOOD, "id_site": "abc"}, "id_site", "positive integer"),
    ({**GOOD, "id_site": -4}, "id_site", "positive integer"),
    ({**GOOD, "idsite": 2}, "id_site", "duplicate field `id_site`"),
    ({**GOOD, "id_sites": 1}, "id_sites", "unknown field `id_sites`"),
    ({**GOOD, "assume_https": "yes"}, "assume_https", "invalid type"),
    ({**GOOD, "http_timeout": 0}, "http_timeout", "between"),
    ({**GOOD, "ignored_patterns": ["ok", "(unclosed"]}, "ignored_patterns[1]", "invalid regex"),
    ({**GOOD, "ignored_ua_patterns": ["["]}, "ignored_ua_patterns[0]", "invalid regex"),
    ({**GOOD, "allowed_methods": "GET"}, "allowed_methods", "invalid type"),
    ({**GOOD, "routes_details": {"/a": {"token_auth": "x"}}}, "routes_details./a.token_auth", "set by the filter"),
    ({**GOOD, "batch_size": 0}, "batch_size", "between"),
    ({**GOOD, "token_auth_env": "NOT_SET_ANYWHERE"}, "token_auth_env", "NOT_SET_ANYWHERE"),
    ("{not json", "", "key must be a string"),
    ("", "", "required"),
]


@pytest.mark.parametrize("plugin,key,message", BAD, ids=[f"{i}-{b[1] or 'json'}" for i, b in enumerate(BAD)])
def test_bad_config_is_refused_with_one_line_naming_the_key(start_envoy, plugin, key, message):
    env = start_envoy(plugin, wait=False)
    assert env.wait_exit(60) != 0, "Envoy must refuse the config"
    lines = [line for line in env.log().splitlines() if "invalid plugin configuration" in line]
    assert len(lines) == 1, lines
    assert f"`{key}`: " in lines[0] if key else "configuration: " in lines[0]
    assert message in lines[0]
    assert "[error][wasm]" in lines[0]


def test_a_good_config_starts(start_envoy):
    env = start_envoy(GOOD)
    assert "tracking site 1 to matomo.test/matomo.php" in env.log()


def test_the_shipped_envoy_yaml_validates_and_its_plugin_config_loads():
    result = E.validate(E.ROOT / "envoy/envoy.yaml", env={"MATOMO_TOKEN_AUTH": "x"}, cwd=E.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
    # without the token variable the filter refuses to load, naming the key
    result = E.validate(E.ROOT / "envoy/envoy.yaml", env={}, cwd=E.ROOT)
    assert result.returncode != 0
    assert "`token_auth_env`" in result.stdout + result.stderr


def test_the_readmes_filter_chain_validates_and_its_plugin_config_loads(tmp_path):
    """README.md's minimal Envoy filter chain, put into the shipped envoy.yaml in place of its own."""
    [snippet] = [b for b in re.findall(r"```yaml\n(.*?)```", (E.ROOT / "README.md").read_text(), re.S)
                 if "http_filters:" in b]
    config = yaml.safe_load((E.ROOT / "envoy/envoy.yaml").read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = yaml.safe_load(snippet)["http_filters"]
    path = tmp_path / "readme.yaml"
    path.write_text(yaml.safe_dump(config))
    result = E.validate(path, env={"MATOMO_TOKEN_AUTH": "x"}, cwd=E.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracking site 1 to matomo.example.com/matomo.php" in result.stdout + result.stderr
