"""Hypothesis strategies shared by the unit tests' fuzzers."""

from hypothesis import strategies as st

#: Any JSON-like value: what a hostile writer of an internal topic can put in a record.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=30)
