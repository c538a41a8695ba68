"""Splitting a shared-app notification by `metadata.phone_number_id`, on Meta's recorded batch
(tests/payloads/whatsapp/batch.json: two business numbers in one POST) and on arbitrary JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.base import MalformedRequestError
from channels.whatsapp import parse_notification
from channels.whatsapp_shared import (
    SharedNotification,
    merged,
    notification_of,
    parse_shared_notification,
    storable_json,
)

BATCH = json.loads((Path(__file__).parent.parent / "payloads/whatsapp/batch.json").read_text())


def test_recorded_batch_splits_into_its_two_business_numbers() -> None:
    """Each number gets exactly its own change's messages; the status rides with its number."""
    shared = parse_shared_notification(BATCH)
    assert sorted(shared.by_phone_number_id) == ["106540352242922", "106540352242923"]
    first = merged(shared.by_phone_number_id["106540352242922"])
    second = merged(shared.by_phone_number_id["106540352242923"])
    assert [m.sender_id for m in first.messages] == ["16505551234", "5511987654321", "16505551234"]
    assert first.ignored == ("status callback",)
    assert [(m.sender_id, m.display_name) for m in second.messages] == [
        ("447700900123", "Priya Patel")
    ]
    assert second.ignored == ()
    # Split or whole, the same messages: the shared route accepts what the tenant route would.
    assert first.messages + second.messages == parse_notification(BATCH).messages
    assert shared.ignored == ()


def test_a_change_rebuilt_alone_keeps_its_entry_and_key() -> None:
    """An unrouted change replayed later parses to the same messages, under the same key."""
    [part] = parse_shared_notification(BATCH).by_phone_number_id["106540352242923"]
    assert part.change.entry_id == "102290129340399"
    again = parse_notification(notification_of([part.change]))
    assert again.messages == part.parsed.messages
    redelivered = parse_shared_notification(json.loads(json.dumps(BATCH)))
    assert redelivered.by_phone_number_id["106540352242923"][0].change.key == part.change.key
    assert part.change.key != (redelivered.by_phone_number_id["106540352242922"][0].change.key)


def test_change_without_a_number_is_ignored_unless_it_carries_messages() -> None:
    """An account-level change has no number and goes to nobody; messages without one are 400."""
    account = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "account_update", "value": {"event": "x"}}]}],
    }
    assert parse_shared_notification(account) == SharedNotification(
        ignored=("account_update notification",)
    )
    orphan = json.loads(json.dumps(BATCH))
    del orphan["entry"][1]["changes"][0]["value"]["metadata"]
    with pytest.raises(MalformedRequestError, match="phone_number_id"):
        parse_shared_notification(orphan)


def test_other_objects_are_acknowledged_for_nobody() -> None:
    """A Page or Instagram notification of the same app is ignored with a reason."""
    shared = parse_shared_notification({"object": "page", "entry": []})
    assert shared.by_phone_number_id == {}
    assert shared.ignored == ("not a whatsapp_business_account notification",)


def test_stored_change_has_no_lone_surrogates_or_nuls() -> None:
    """What is kept as unrouted is text any database takes."""
    assert storable_json({"a\ud800": ["x\x00y", 1, None]}) == {"a\ufffd": ["xy", 1, None]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "object",
                    "entry",
                    "id",
                    "changes",
                    "field",
                    "value",
                    "metadata",
                    "phone_number_id",
                    "messages",
                    "contacts",
                    "statuses",
                    "from",
                    "type",
                    "text",
                    "timestamp",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def outcome(payload: Any) -> SharedNotification | MalformedRequestError:
    try:
        return parse_shared_notification(payload)
    except MalformedRequestError as exc:
        return exc


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    data=json_values
    | st.fixed_dictionaries(
        {"object": st.just("whatsapp_business_account"), "entry": st.lists(json_values)}
    )
)
def test_any_json_splits_or_is_malformed(data: Any) -> None:
    """Any decoded JSON gives a split with numbered parts, or the typed 400, nothing else."""
    result = outcome(data)
    assert isinstance(result, SharedNotification | MalformedRequestError)
    if isinstance(result, SharedNotification):
        for phone_number_id, parts in result.by_phone_number_id.items():
            assert 0 < len(phone_number_id) <= 64
            assert all(p.change.phone_number_id == phone_number_id for p in parts)
            assert all(len(p.change.key) == 64 for p in parts)


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths_of(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths_of(child, (*prefix, index))
    return found


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(paths_of(BATCH)[1:]), replacement=json_values)
def test_any_one_field_of_the_recorded_batch_replaced_splits_or_is_malformed(
    path: tuple[Any, ...], replacement: Any
) -> None:
    """The recorded two-number batch with any one value swapped for junk: a split or a 400."""
    data = json.loads(json.dumps(BATCH))
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = replacement
    assert isinstance(outcome(data), SharedNotification | MalformedRequestError)
