import pytest

from hubstack.hub.provider_groups import hub_groups


@pytest.mark.parametrize(
    ("given", "mapping", "expected"),
    [
        (["course1"], {}, ["course1"]),
        (["My Org:Team 1"], {}, ["my-org-team-1"]),
        (["cn=Staff,ou=groups"], {"cn=Staff,ou=groups": "staff"}, ["staff"]),
        (["Lab", "lab", "LAB!"], {}, ["lab"]),
        (["1st-year", "", "---"], {}, []),
        (["x" * 31], {}, []),
        (["a"], {"a": "Not Safe"}, []),
    ],
)
def test_provider_groups_become_safe_hub_groups(given, mapping, expected):
    assert hub_groups(given, mapping) == expected
