"""An outbox row carries one event or many; the relay gets back every event with its key."""

from __future__ import annotations

import re

import orjson
from hypothesis import given
from hypothesis import strategies as st

from shop.events import Event
from shop.products.tables import product_outbox
from shop.storage import outbox

keys = st.one_of(st.integers(1, 10**12).map(str), st.uuids().map(str))
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
events = st.builds(
    Event,
    aggregate=st.just("order"),
    type=st.sampled_from(["order.confirmed", "order.rejected"]),
    key=keys,
    version=st.integers(1, 5),
    data=st.dictionaries(texts, texts, max_size=3),
)


def _row(sql: str) -> tuple[str, bytes]:
    """The event_key and payload of the one row an INSERT of insert_events_sql writes."""
    row = r"\('[^']*', '([^']*)', X'([0-9a-f]*)', '[^']*', NULL\)"  # (no trace: tracing off)
    match = re.fullmatch(r"INSERT INTO \w+ \(.*\) VALUES " + row, sql)
    assert match is not None, sql
    return match.group(1), bytes.fromhex(match.group(2))


@given(st.lists(events, min_size=1, max_size=30))
def test_every_event_of_a_row_comes_back_in_order_with_its_key(written: list[Event]) -> None:
    key, payload = _row(outbox.insert_events_sql(product_outbox, written))
    messages = outbox._messages(key, payload)
    assert [m.key for m in messages] == [e.key for e in written]
    envelopes = [orjson.loads(m.body) for m in messages]
    assert [(e["type"], e["version"], e["data"]) for e in envelopes] == [
        (e.type, e.version, e.data) for e in written
    ]
    assert len({e["event_id"] for e in envelopes}) == len(written)
