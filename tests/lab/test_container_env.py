"""`$(VAR)` expansion as the kubelet does it (k8s.io/kubernetes
third_party/forked/golang/expansion/expand.go); the cases follow its expand_test.go. The
env and argv rules on real pods: test_pods and test_docker_runtime (tests/lab/env_rules)."""

from __future__ import annotations

import pytest

from lab.container_env import command_and_args, expand, manifest_env
from lab.manifest import Container, EnvVar

VARIABLES = {"VAR_A": "A", "VAR_B": "B", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_EMPTY)", ""),
        ("$(VAR_REF)", "$(VAR_A)"),  # a value is not expanded again
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
        ("$$$$$$$(VAR_A)", "$$$A"),
        ("foo\\$(VAR_A)bar", "foo\\Abar"),  # no backslash escape
        ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),  # the name runs to the first ")"
        ("$(VAR_A)$(", "A$("),
        ("$(VAR_A", "$(VAR_A"),
        ("$(VAR_A)$", "A$"),
        ("$VAR_A", "$VAR_A"),
        ("$()", "$()"),
        ("", ""),
    ],
)
def test_expand_as_the_kubelet_does(value: str, expected: str) -> None:
    assert expand(value, VARIABLES) == expected


def test_only_values_expand_and_args_see_the_env_list() -> None:
    """1. An env list with a value naming earlier and later entries, a ConfigMap value
    (literal) and a fieldRef; 2. the value sees what came before it, literal values stay
    as written; 3. command and args expand against the list, the image's (None) kept."""
    container = Container(
        "c",
        "app",
        ("run", "$(A)"),
        ("$(FROM_CM)", "$(B)", "$$(A)"),
        (
            EnvVar("FROM_CM", "$(A)-cm", literal=True),
            EnvVar("A", "a"),
            EnvVar("IP", field_ref="status.podIP"),
            EnvVar("B", "$(A)/$(FROM_CM)/$(IP)/$(C)"),
            EnvVar("C", "c"),
        ),
        {},
        None,
        None,
        None,
    )
    env = manifest_env(container, "pod-1", "10.0.0.7", rewrite=lambda v: v.replace("cm", "CM"))
    assert env == {
        "FROM_CM": "$(A)-CM",  # the rewrite edits every value, literal ones included
        "A": "a",
        "IP": "10.0.0.7",
        "B": "a/$(A)-CM/10.0.0.7/$(C)",
        "C": "c",
    }
    assert command_and_args(container, env) == (
        ("run", "a"),
        ("$(A)-CM", "a/$(A)-CM/10.0.0.7/$(C)", "$(A)"),
    )
    bare = Container("c", "app", None, None, (), {}, None, None, None)
    assert command_and_args(bare, env) == (None, None)
