"""Reading a policy file from disk into a :class:`Policy`, or reporting why not.

Stages, each reporting every problem it finds: YAML syntax and duplicate keys, the
schema (``proto/ai_sidecar/policy/v1/policy.proto``), then references between
sections. Only a file that passes all three becomes a policy.
"""

import hashlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from google.protobuf import json_format

from sidecar._proto.ai_sidecar.policy.v1 import policy_pb2
from sidecar.domain.ids import ClusterName
from sidecar.domain.policy import Policy
from sidecar.domain.secret import Secret
from sidecar.policy.compiler import compile_policy
from sidecar.policy.problems import PolicyError, Problem
from sidecar.policy.schema import check_against_schema
from sidecar.policy.yaml_source import format_path, read_yaml


def load_policy(path: Path) -> Policy:
    """Load and compile the policy at ``path``; raise :class:`PolicyError` if unusable."""
    return parse_policy(_read_text(path), str(path))


def parse_policy(text: str, source_name: str) -> Policy:
    """Compile policy YAML ``text``; ``source_name`` names it in error messages."""
    document = read_yaml(text)
    problems = list(document.problems)
    if not problems:
        problems = check_against_schema(document)
    if problems:
        raise PolicyError(source_name, problems)
    message = policy_pb2.Policy()
    json_format.ParseDict(document.data, message)
    compiled = compile_policy(message, _digest(text))
    if compiled.policy is None:
        raise PolicyError(
            source_name,
            [
                Problem(format_path(path), what, document.line_of(path))
                for path, what in compiled.problems
            ],
        )
    return compiled.policy


def resolve_credentials(
    policy: Policy, environment: Mapping[str, str], source_name: str
) -> Mapping[ClusterName, Secret]:
    """Read each cluster's provider credential from the environment it names.

    A named variable that is unset or empty is an error: routing a request without
    the credential its cluster needs would only fail later, upstream.
    """
    credentials: dict[ClusterName, Secret] = {}
    problems: list[Problem] = []
    for name, cluster in policy.clusters.items():
        if cluster.credential_env is None:
            continue
        value = environment.get(cluster.credential_env, "")
        if not value:
            problems.append(
                Problem(
                    f"clusters.{name}.credential_env",
                    f"environment variable {cluster.credential_env} is not set",
                )
            )
            continue
        credentials[name] = Secret(value)
    if problems:
        raise PolicyError(source_name, problems)
    return MappingProxyType(credentials)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(str(path), [Problem("", f"cannot read file: {error.strerror}")]) from None
    except UnicodeDecodeError:
        raise PolicyError(str(path), [Problem("", "file is not UTF-8 text")]) from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
