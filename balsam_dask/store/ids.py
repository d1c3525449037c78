"""Ids made by the writing session: ``session_id << 40 | sequence``.

Every process that writes has its own session row, so ids never collide across
processes, need no round trip to the database, and a batch replayed after a lost
connection carries the same primary keys (the replay writes nothing twice).
"""

from __future__ import annotations

import itertools

SEQ_BITS = 40
MAX_SEQ = (1 << SEQ_BITS) - 1


class IdAllocator:
    def __init__(self, session_id: int) -> None:
        if session_id <= 0 or session_id >= (1 << 23):
            raise ValueError(f"session id {session_id} out of range 1..2**23-1")
        self.session_id = session_id
        self._base = session_id << SEQ_BITS
        # next() on a count is one C call: atomic under the GIL, so threads need no lock (a
        # lock cost more than the rest of recording one transition on the scheduler)
        self._seq = itertools.count(1)

    def next(self) -> int:
        seq = next(self._seq)
        if seq > MAX_SEQ:
            raise OverflowError("this session has used all its ids; open a new session")
        return self._base | seq


def session_of(any_id: int) -> int:
    return any_id >> SEQ_BITS
