"""Matrix expansion follows GitHub Actions' documented examples exactly."""

from __future__ import annotations

import pytest

from runbook_celery.definition.matrix import TooManyCombinations, expand, keys, label


def test_githubs_include_example():
    # "Example: Expanding configurations", docs.github.com ... jobs/using-a-matrix-for-your-jobs
    matrix = {
        "fruit": ["apple", "pear"],
        "animal": ["cat", "dog"],
        "include": [
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    }
    assert expand(matrix, 256) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_githubs_exclude_example():
    # "Example: Excluding configurations": 12 combinations, 3 excluded
    matrix = {
        "os": ["macos-latest", "windows-latest"],
        "version": [12, 14, 16],
        "environment": ["staging", "production"],
        "exclude": [
            {"os": "macos-latest", "version": 12, "environment": "production"},
            {"os": "windows-latest", "version": 16},
        ],
    }
    combos = expand(matrix, 256)
    assert len(combos) == 9
    assert {"os": "macos-latest", "version": 12, "environment": "production"} not in combos
    assert not [c for c in combos if c["os"] == "windows-latest" and c["version"] == 16]


def test_githubs_include_adding_a_value_to_one_combination():
    # "Example: Adding configurations": npm 6 only for windows-latest with node 16
    matrix = {
        "os": ["windows-latest", "ubuntu-latest"],
        "node": [14, 16],
        "include": [{"os": "windows-latest", "node": 16, "npm": 6}],
    }
    combos = expand(matrix, 256)
    assert [c.get("npm") for c in combos] == [None, 6, None, None]


def test_an_include_only_matrix_is_its_list_with_object_values():
    matrix = {
        "include": [
            {"site": "production", "datacenter": {"name": "site-a", "region": "eu"}},
            {"site": "staging", "datacenter": {"name": "site-b", "region": "us"}},
        ]
    }
    combos = expand(matrix, 256)
    assert combos == matrix["include"]
    assert keys(matrix) == ["site", "datacenter"]


def test_added_values_may_be_overwritten_original_ones_never():
    matrix = {
        "os": ["linux"],
        "include": [{"extra": "a"}, {"extra": "b"}, {"os": "mac", "extra": "c"}],
    }
    assert expand(matrix, 256) == [{"os": "linux", "extra": "b"}, {"os": "mac", "extra": "c"}]


def test_the_cross_product_counts_toward_the_cap_before_it_is_built():
    matrix = {f"k{i}": list(range(100)) for i in range(8)}  # 10**16 combinations
    with pytest.raises(TooManyCombinations) as info:
        expand(matrix, 10_000)
    assert info.value.count == 100**8


def test_includes_count_toward_the_cap():
    with pytest.raises(TooManyCombinations):
        expand({"a": [1, 2], "include": [{"b": 1}, {"a": 3}, {"a": 4}]}, 3)


def test_an_instance_label_names_its_values():
    assert label({"python-version": "3.12", "os": "linux"}) == "python-version=3.12, os=linux"
    assert label({"dc": {"name": "a"}}) == "dc={name: a}"
