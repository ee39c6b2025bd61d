"""The text writer gives prometheus_client's bytes for any family, its reference."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.samples import Sample

from exporter import textformat
from exporter.textformat import LabelSet, _Families

#: Names the text format takes as they are, and some it escapes (handed to prometheus_client).
names = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_:]{0,12}", fullmatch=True),
    st.sampled_from(["0starts_with_digit", "has.dot", "has-dash", "ünïcode"]),
)
label_names = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(["le.x", "0a", "ü"]),
)
#: Values with every character the writer escapes, and the ones it must not touch.
label_values = st.text(st.sampled_from('ab\\\n"ü\ud7ff\u2028 {}=,'), max_size=6)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0.0, -0.0, 1, 1.0, 1e21, 123456789.0, 1712345678.5]),
)
helps = st.text(st.sampled_from('ab\\\n"ü '), max_size=10)


@st.composite
def families(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(["gauge", "gauge", "counter", "info", "stateset", "summary"]))
    name, documentation = draw(names), draw(helps)
    keys = draw(st.lists(label_names, max_size=4, unique=True))
    rows = draw(
        st.lists(
            st.tuples(st.lists(label_values, min_size=len(keys), max_size=len(keys)), numbers),
            max_size=6,
        )
    )
    family: Metric
    if kind == "gauge":
        family = GaugeMetricFamily(name, documentation, labels=keys)
    elif kind == "counter":
        family = CounterMetricFamily(
            name, documentation, labels=keys, created=draw(st.none() | st.just(1.5))
        )
    elif kind == "info":
        family = InfoMetricFamily(name, documentation, labels=keys)
        for values, _ in rows:
            family.add_metric(values, {"version": "1"})
        return family
    elif kind == "stateset":
        family = StateSetMetricFamily(name, documentation, labels=keys)
        for values, _ in rows:
            family.add_metric(values, {"up": True, "down": False})
        return family
    else:
        family = SummaryMetricFamily(name, documentation, labels=keys)
        for values, number in rows:
            family.add_metric(values, count_value=1, sum_value=_finite(number))
        return family
    timestamp = draw(st.none() | st.floats(min_value=0, max_value=4e9))
    for values, number in rows:
        if kind == "counter":
            family.add_metric(values, abs(_finite(number)), timestamp=timestamp)
        else:
            family.add_metric(values, number, timestamp=timestamp)
    return family


def _finite(number: float) -> float:
    return float(number) if math.isfinite(float(number)) else 1.0


def reference(written: list[Metric]) -> str:
    return generate_latest(_Families(written)).decode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.lists(families(), max_size=5))
def test_any_families_are_written_as_prometheus_client_writes_them(
    written: list[Metric],
) -> None:
    assert textformat.write(written) == reference(written)


@st.composite
def sharing_labels(draw: st.DrawFn) -> list[Metric]:
    """Gauges whose samples share a few label sets, across families and within one, as a
    VM's series do."""
    keys = draw(st.lists(label_names, max_size=3, unique=True))
    values = st.lists(label_values, min_size=len(keys), max_size=len(keys))
    shared = [
        LabelSet(dict(zip(keys, draw(values), strict=True))) for _ in range(draw(st.integers(1, 3)))
    ]
    written: list[Metric] = []
    for _ in range(draw(st.integers(1, 4))):
        family = GaugeMetricFamily(draw(names), draw(helps), labels=keys)
        for _ in range(draw(st.integers(0, 4))):
            family.samples.append(Sample(family.name, draw(st.sampled_from(shared)), draw(numbers)))
        written.append(family)
    return written


@settings(max_examples=200, deadline=None)
@given(sharing_labels())
def test_labels_shared_by_families_are_written_as_prometheus_client_writes_them(
    written: list[Metric],
) -> None:
    expected = reference(written)
    # A family at a time, as the exposition writes them, the labels' text kept between calls.
    assert "".join(textformat.write([family]) for family in written) == expected
    assert textformat.write(written) == expected  # again, every label set's text kept


def test_a_histogram_and_a_counter_with_its_created_time_go_to_prometheus_client() -> None:
    # Kinds this writer does not take on are still written, by the reference itself.
    histogram = HistogramMetricFamily("h", "a histogram", labels=["x"])
    histogram.add_metric(["1"], buckets=[("1.0", 2), ("+Inf", 3)], sum_value=4)
    counter = CounterMetricFamily("c", "a counter", labels=["x"], created=12.0)
    counter.add_metric(["1"], 3, created=12.0)
    gauge = GaugeMetricFamily("g", 'a "gauge"\nwith\\help', labels=["b", "a"])
    gauge.add_metric(['v"1', "w\\2\n"], -0.0)
    gauge.add_metric(["x", "y"], 0.0)
    text = textformat.write([histogram, counter, gauge])
    assert text == reference([histogram, counter, gauge])
    assert 'g{a="w\\\\2\\n",b="v\\"1"} -0.0\n' in text
    assert "c_created" in text
