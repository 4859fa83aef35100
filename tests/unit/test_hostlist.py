import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurmkit.errors import ParseError
from slurmkit.slurm import hostlist


def test_expand_ranges_and_plain_names_in_order():
    assert hostlist.expand("c[1-3,7],login") == ["c1", "c2", "c3", "c7", "login"]


def test_expand_keeps_zero_padding():
    assert hostlist.expand("gpu[08-10]") == ["gpu08", "gpu09", "gpu10"]


@pytest.mark.parametrize("empty", ["", "None assigned", "(null)", "  "])
def test_slurm_spellings_of_no_nodes_are_empty(empty):
    assert hostlist.expand(empty) == []


def test_bad_expression_raises_parse_error_naming_it():
    with pytest.raises(ParseError, match=r"c\[1-"):
        hostlist.expand("c[1-")


def test_compress_sorts_and_merges():
    assert hostlist.compress(["c3", "c1", "c2", "c10", "login"]) == "c[1-3,10],login"
    assert hostlist.compress([]) == ""


@given(st.sets(st.integers(min_value=0, max_value=5000), min_size=1, max_size=60))
def test_compress_then_expand_round_trips(numbers):
    names = [f"n{number}" for number in sorted(numbers)]
    assert hostlist.expand(hostlist.compress(names)) == names
