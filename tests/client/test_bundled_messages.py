"""How bundled submissions leave the client: what one loop turn queued goes in one message, in order."""

from __future__ import annotations

from typing import Any

from balsam_dask.client import bundled
from balsam_dask.client.bundled import submit_messages
from balsam_dask.protocol import BUNDLE_SUBMIT_OP


def calls(prefix: str, n: int, fn: str) -> list[Any]:
    return [{"key": f"{prefix}{i}", "fn": fn} for i in range(n)]


def test_batches_merge_in_order_with_their_functions() -> None:
    msgs = submit_messages([(calls("a", 2, "f"), {"f": b"F"}), (calls("b", 1, "g"), {"g": b"G"}),
                            (calls("c", 1, "f"), {"f": b"F"})])  # fmt: skip
    assert [m["op"] for m in msgs] == [BUNDLE_SUBMIT_OP]
    assert [t["key"] for t in msgs[0]["tasks"]] == ["a0", "a1", "b0", "c0"]
    assert msgs[0]["fns"] == {"f": b"F", "g": b"G"}
    assert submit_messages([]) == []


def test_a_message_holds_at_most_a_chunk(monkeypatch: Any) -> None:
    monkeypatch.setattr(bundled, "SUBMIT_CHUNK", 3)
    msgs = submit_messages([(calls("a", 2, "f"), {"f": b"F"}), (calls("b", 5, "g"), {"g": b"G"})])
    assert [[t["key"] for t in m["tasks"]] for m in msgs] == [["a0", "a1"], ["b0", "b1", "b2"], ["b3", "b4"]]
    assert [m["fns"] for m in msgs] == [{"f": b"F"}, {"g": b"G"}, {"g": b"G"}]
