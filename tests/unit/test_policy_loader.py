"""Policy loading: a good file compiles; every kind of bad file is refused clearly.

Each case edits the demo policy in one place and expects one problem naming the
line, the field path and what is wrong.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.domain.api import Provider
from sidecar.policy.envoy_check import check_envoy_config
from sidecar.policy.loader import load_policy, parse_policy, resolve_credentials
from sidecar.policy.problems import PolicyError
from tests.conftest import DEMO_POLICY

GOOD = """\
version: 1
clusters:
  cheap: {provider: openai, model: gpt-4o-mini, credential_env: OPENAI_KEY}
  local: {provider: ollama, model: llama3.2}
models:
  chat: {}
tiers:
  free:
    routes:
      chat: {cluster: cheap}
tenants:
  acme:
    tier: free
    api_keys: ["sha256:%s"]
""" % ("a" * 64)


def test_the_demo_policy_compiles() -> None:
    policy = load_policy(DEMO_POLICY)
    assert set(policy.tenants) == {"demo-free", "demo-paid", "demo-enterprise", "demo-sso"}
    assert policy.clusters["ollama-local"].provider is Provider.OLLAMA
    assert policy.tiers["free"].routes["chat"].chain == ("openai-cheap", "ollama-local")
    assert policy.jwt_source is not None
    assert policy.jwt_source.metadata_namespace == "envoy.filters.http.jwt_authn"


def test_defaults_apply_when_sections_are_left_out() -> None:
    policy = parse_policy(GOOD, "good.yaml")
    assert policy.cluster_header == "x-ai-sidecar-cluster"
    assert policy.max_body_bytes == 1024 * 1024
    assert policy.api_key_source.header == "authorization"
    assert policy.api_key_source.scheme == "Bearer"
    assert policy.jwt_source is None


@dataclass(frozen=True)
class BadCase:
    why: str
    old: str
    new: str
    expected: str  # the rendered problem line, after the file name


BAD_CASES = [
    BadCase(
        "an unknown field, with a suggestion",
        "model: gpt-4o-mini",
        "modle: gpt-4o-mini",
        ":3: clusters.cheap.modle: unknown field 'modle' (did you mean 'model'?)",
    ),
    BadCase(
        "a required field left out",
        "provider: openai, ",
        "",
        ":3: clusters.cheap.provider: required field is missing",
    ),
    BadCase(
        "a model-serving cluster without its model",
        "model: gpt-4o-mini, ",
        "",
        ":3: clusters.cheap.model: required for provider 'openai'",
    ),
    BadCase(
        "a value outside an enumeration",
        "provider: openai",
        "provider: anthropic",
        ":3: clusters.cheap.provider: 'anthropic' is not one of: openai, ollama",
    ),
    BadCase(
        "a wrong type",
        "version: 1",
        "version: one",
        ":1: version: expected a whole number, got the string 'one'",
    ),
    BadCase(
        "an unsupported version",
        "version: 1",
        "version: 2",
        ":1: version: must be at most 1, got 2",
    ),
    BadCase(
        "a tenant naming a tier that does not exist",
        "tier: free",
        "tier: gold",
        ":13: tenants.acme.tier: unknown tier 'gold' (known: free)",
    ),
    BadCase(
        "a route to an undefined cluster",
        "{cluster: cheap}",
        "{cluster: pricey}",
        ":10: tiers.free.routes.chat.cluster: unknown cluster 'pricey' (known: cheap, local)",
    ),
    BadCase(
        "a route for an undefined virtual model",
        "chat: {cluster",
        "chatty: {cluster",
        ":10: tiers.free.routes.chatty: unknown virtual model 'chatty' (known: chat)",
    ),
    BadCase(
        "a key stored in clear text",
        '["sha256:' + "a" * 64 + '"]',
        '["sk-live-123"]',
        ":14: tenants.acme.api_keys[0]: invalid value 'sk-live-123': use sha256: followed by",
    ),
    BadCase(
        "a cluster defined twice",
        "  local: {provider",
        "  cheap: {provider",
        ":4: clusters.cheap: duplicate key 'cheap' (first defined on line 3)",
    ),
    BadCase(
        "a credential variable that is not a variable name",
        "credential_env: OPENAI_KEY",
        "credential_env: openai key",
        ":3: clusters.cheap.credential_env: invalid value 'openai key': use an environment",
    ),
    BadCase(
        "a list where a mapping belongs",
        "models:\n  chat: {}",
        "models:\n  - chat",
        ":5: models: expected a mapping of names, got a list",
    ),
    BadCase(
        "broken YAML syntax", "tiers:\n  free:", "tiers:\n free:\n  - x: [", ":11: not valid YAML"
    ),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda case: case.why)
def test_bad_policies_are_refused_with_file_line_and_field(case: BadCase) -> None:
    assert case.old in GOOD, "the case must edit something that exists"
    with pytest.raises(PolicyError) as caught:
        parse_policy(GOOD.replace(case.old, case.new, 1), "bad.yaml")
    rendered = [problem.render("bad.yaml") for problem in caught.value.problems]
    assert any(line.startswith("bad.yaml" + case.expected) for line in rendered), rendered


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("routing: {cluster_header: authorization}\n", "is a header with another meaning"),
        ("routing: {cluster_header: x-envoy-upstream}\n", "is a header with another meaning"),
        (
            "routing: {cluster_header: x-key}\nidentity: {api_key: {header: x-key}}\n",
            "must differ from routing.cluster_header",
        ),
        ("identity: {api_key: {scheme: 'Bearer '}}\n", "must be one word"),
    ],
)
def test_header_settings_that_would_break_routing_are_refused(section: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        parse_policy(GOOD + section, "bad.yaml")


def test_one_key_held_by_two_tenants_is_refused() -> None:
    text = GOOD + '  other:\n    tier: free\n    api_keys: ["sha256:%s"]\n' % ("a" * 64)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "bad.yaml")
    assert [p.render("bad.yaml") for p in caught.value.problems] == [
        "bad.yaml:17: tenants.other.api_keys[0]: the same API key is already held by tenant 'acme'"
    ]


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("version: 1", "version: 0").replace("openai", "openia")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "bad.yaml")
    assert len(caught.value.problems) == 2
    assert "2 problems" in str(caught.value)


def test_a_tenant_nobody_can_identify_is_refused() -> None:
    text = GOOD.replace('    api_keys: ["sha256:' + "a" * 64 + '"]\n', "")
    with pytest.raises(PolicyError, match="no request can ever be identified"):
        parse_policy(text, "bad.yaml")


def test_yaml_aliases_are_refused_even_self_referencing_ones() -> None:
    with pytest.raises(PolicyError, match="aliases") as caught:
        parse_policy("version: 1\nclusters: &c {self: *c}\n", "bad.yaml")
    assert len(caught.value.problems) == 1


def test_an_alias_bomb_is_refused_at_once() -> None:
    layers = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for name, previous in zip("bcdefgh", "abcdefg", strict=True):
        layers.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    with pytest.raises(PolicyError, match="aliases") as caught:
        parse_policy("\n".join(layers) + "\n", "bomb.yaml")
    assert len(caught.value.problems) == 7, "one problem per aliased node"


def test_yes_and_no_stay_names_as_in_yaml_1_2() -> None:
    text = GOOD.replace("  free:\n    routes:", "  no:\n    routes:").replace(
        "tier: free", "tier: no"
    )
    policy = parse_policy(text, "good.yaml")
    assert "no" in policy.tiers


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(PolicyError, match="expected a mapping, got nothing"):
        parse_policy("", "empty.yaml")


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read file") as caught:
        load_policy(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(caught.value)


def test_credentials_come_from_the_named_environment_variable() -> None:
    policy = parse_policy(GOOD, "good.yaml")
    credentials = resolve_credentials(policy, {"OPENAI_KEY": "sk-up"}, "good.yaml")
    assert credentials["cheap"].reveal() == "sk-up"
    assert "local" not in credentials


def test_an_unset_credential_variable_stops_the_start() -> None:
    policy = parse_policy(GOOD, "good.yaml")
    with pytest.raises(PolicyError, match="environment variable OPENAI_KEY is not set"):
        resolve_credentials(policy, {"OPENAI_KEY": ""}, "good.yaml")


ENVOY_OK = """\
static_resources:
  listeners:
  - name: app
    filter_chains:
    - filters:
      - typed_config:
          early_header_mutation_extensions:
          - typed_config:
              mutations:
              - remove: x-ai-sidecar-cluster
          route_config:
            virtual_hosts:
            - routes:
              - route: {cluster_header: x-ai-sidecar-cluster}
  clusters:
  - name: cheap
  - name: local
"""


def _envoy_problems(tmp_path: Path, envoy_yaml: str) -> list[str]:
    config = tmp_path / "envoy.yaml"
    config.write_text(envoy_yaml)
    policy = parse_policy(GOOD, "good.yaml")
    return [problem.message for problem in check_envoy_config(policy, config)]


def test_envoy_check_accepts_a_matching_config(tmp_path: Path) -> None:
    assert _envoy_problems(tmp_path, ENVOY_OK) == []


def test_envoy_check_finds_a_cluster_envoy_lacks(tmp_path: Path) -> None:
    problems = _envoy_problems(tmp_path, ENVOY_OK.replace("- name: local\n", ""))
    assert len(problems) == 1
    assert problems[0].startswith("no cluster named 'local'")


def test_envoy_check_finds_an_unstripped_routing_header(tmp_path: Path) -> None:
    problems = _envoy_problems(
        tmp_path, ENVOY_OK.replace("- remove: x-ai-sidecar-cluster", "- remove: x-other")
    )
    assert len(problems) == 1
    assert "clients could pick the cluster" in problems[0]


def test_envoy_check_finds_no_route_reading_the_header(tmp_path: Path) -> None:
    problems = _envoy_problems(
        tmp_path, ENVOY_OK.replace("{cluster_header: x-ai-sidecar-cluster}", "{cluster: cheap}")
    )
    assert problems == [
        f"no route in Envoy config {tmp_path / 'envoy.yaml'} uses cluster_header "
        "'x-ai-sidecar-cluster'"
    ]
