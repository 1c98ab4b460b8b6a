"""network.config: the network YAML, with file:line and did-you-mean in every error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from network.config import NetworkSettings, load_config, load_config_text

GOOD = """\
version: 1
network: {name: cancer_research_net, description: "Three hospitals"}
domains:
  - {name: st_marys, url: "grpc://127.0.0.1:8815", timeout_s: 30}
  - name: city_general
    url: "grpc+tls://10.0.0.7:8815"
    tls_ca: certs/ca.pem
settings: {health_interval_s: 5, metadata_cache_s: 60, max_parallel: 4}
"""


def test_a_full_config(tmp_path: Path) -> None:
    path = tmp_path / "network.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.name == "cancer_research_net"
    assert config.description == "Three hospitals"
    assert [(d.name, d.url, d.timeout_s) for d in config.domains] == [
        ("st_marys", "grpc://127.0.0.1:8815", 30.0),
        ("city_general", "grpc+tls://10.0.0.7:8815", 30.0)]
    assert config.domains[1].tls_ca == str(tmp_path / "certs" / "ca.pem")
    assert config.settings == NetworkSettings(health_interval_s=5, metadata_cache_s=60,
                                              max_parallel=4)
    with pytest.raises(ConfigError, match=re.escape("Cannot read tls_ca of domain "
                                                    "'city_general'")):
        config.domains[1].tls_root_certs()


def test_defaults() -> None:
    config = load_config_text("version: 1\nnetwork: {name: n}\n"
                              "domains: [{name: a, url: 'grpc://h:1'}]\n")
    assert config.settings == NetworkSettings()
    assert config.domains[0].timeout_s == 30.0 and config.domains[0].tls_ca is None


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("timeout_s: 30", "timeout: 30"),
     "net.yaml:4: domains[0]: Unknown key 'timeout'. Did you mean 'timeout_s'?"),
    (GOOD.replace("metadata_cache_s", "metadata_cache"),
     "net.yaml:8: settings: Unknown key 'metadata_cache'. Did you mean 'metadata_cache_s'?"),
    (GOOD.replace("city_general", "st_marys"),
     "net.yaml:5: domains[1].name: Duplicate domain name 'st_marys' (also domains[0])"),
    (GOOD.replace("city_general", "Federated"),
     "net.yaml:5: domains[1].name: 'federated' is the network's virtual catalog"),
    (GOOD.replace("city_general", "city-general"),
     "net.yaml:5: domains[1].name: 'city-general' is not a valid name"),
    (GOOD.replace('"grpc://127.0.0.1:8815"', '"http://127.0.0.1:8815"'),
     "net.yaml:4: domains[0].url: 'http://127.0.0.1:8815' is not a Flight URL"),
    (GOOD.replace("timeout_s: 30", "timeout_s: -1"),
     "net.yaml:4: domains[0].timeout_s: Expected a number > 0, got -1"),
    (GOOD.replace("max_parallel: 4", "max_parallel: 0"),
     "net.yaml:8: settings.max_parallel: Expected a whole number >= 1, got 0"),
    (GOOD.replace('"grpc+tls://10.0.0.7:8815"', '"grpc://10.0.0.7:8815"'),
     "net.yaml:7: domains[1].tls_ca: tls_ca is for a grpc+tls:// domain"),
    (GOOD.replace("version: 1", "version: 2"), "net.yaml:1: version: Unsupported version 2"),
    ("version: 1\nnetwork: {name: n}\n", "net.yaml:1: Missing required key 'domains'"),
    ("version: 1\nnetwork: {name: n}\ndomains: []\n", "net.yaml:3: domains: List at least one"),
    ("version: 1\nnetwork: {name: n}\ndomains: [{name: a}]\n",
     "net.yaml:3: domains[0]: Missing required key 'url'"),
    ("version: 1\nnetwork: [oops\n", "net.yaml:3: Not valid YAML"),
    ("", "net.yaml: the file is empty"),
    # Two domains must never be sent credentials derived for the same name.
    (GOOD.replace("tls_ca: certs/ca.pem", "tls_ca: certs/ca.pem\n    domain_name: St_Marys"),
     "net.yaml:8: domains[1].domain_name: Two domains would be sent credentials derived for "
     "the name 'St_Marys' (also domains[0])"),
    (GOOD.replace("timeout_s: 30}", "timeout_s: 30, domain_name: city_general}"),
     "net.yaml:5: domains[1].name: Two domains would be sent credentials derived for the name "
     "'city_general' (also domains[0])"),
    (GOOD.replace("timeout_s: 30}", "timeout_s: 30, domain_name: st-marys}"),
     "net.yaml:4: domains[0].domain_name: 'st-marys' is not a valid name"),
])
def test_errors_point_at_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, file="net.yaml")
    assert str(info.value).startswith(message), str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the network config .*No such file"):
        load_config(tmp_path / "nope.yaml")


def test_a_domain_listed_under_another_name_keeps_its_own() -> None:
    config = load_config_text(GOOD.replace("timeout_s: 30}", "timeout_s: 30, "
                                           "domain_name: st_marys_hospital}"))
    assert [(d.name, d.own_name) for d in config.domains] == [
        ("st_marys", "st_marys_hospital"), ("city_general", "city_general")]
