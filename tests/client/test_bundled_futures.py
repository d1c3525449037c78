"""Bundled futures resolved from outcome batches, with and without their values unpickled."""

from __future__ import annotations

import cloudpickle
import pytest

from balsam_dask.client.bundled import BundledFutures


def test_values_are_unpickled_only_where_they_are_read() -> None:
    futures = BundledFutures()
    wanted, unread, failed = (*futures.expect(None, ["a"]), *futures.expect(None, ["b", "c"], values=False))
    futures.on_results([
        {"key": "a", "status": "ok", "value": cloudpickle.dumps({"x": 1})},
        {"key": "b", "status": "ok", "value": b"not a pickle: never loaded"},
        {"key": "c", "status": "error", "error": cloudpickle.dumps(ValueError("bad c"))},
    ])  # fmt: skip
    assert wanted.result(timeout=1) == {"x": 1}
    assert unread.result(timeout=1) is None and unread.status == "finished"
    assert failed.status == "error"  # errors are always unpickled: the owner records them
    with pytest.raises(ValueError, match="bad c"):
        failed.result(timeout=1)


def test_an_outcome_before_its_future() -> None:
    futures = BundledFutures()
    futures.on_results([{"key": "early", "status": "ok", "value": cloudpickle.dumps(3)}])
    (fut,) = futures.expect(None, ["early"])
    assert fut.result(timeout=1) == 3
