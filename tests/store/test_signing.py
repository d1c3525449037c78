"""Signed pickles in the store (store/signing.py): a real SQLite file and the PostgreSQL server."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from balsam_dask import Store, TaskSpec
from balsam_dask.errors import KeyFileError, StoreReadOnly, UntrustedData, WrongKey
from balsam_dask.store import NewTask, TaskUpdate
from balsam_dask.store.signing import KEY_ENV, Signer
from tests.untrusted import forged, planted_pickle, raw, set_raw


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _task(store: Store, payload: bytes | None = b"payload-bytes", **result: object) -> int:
    tid = store.new_id()
    ops: list[object] = [NewTask(tid, f"k{tid}", TaskSpec(), payload=payload)]
    if result:
        ops.append(TaskUpdate(tid, dict(result)))
    store.apply(ops)  # type: ignore[arg-type]
    return tid


def _result_file(tmp_path: Path, name: str, data: bytes) -> tuple[str, bytes]:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).digest()


def test_stored_pickles_are_signed_and_given_back_verified(store: Store, tmp_path: Path) -> None:
    a = _task(store, result=b"inline-result")
    lazy = NewTask(store.new_id(), "lazy", TaskSpec(), payload=partial(bytes, b"made-by-the-writer"))
    store.apply([lazy])
    ref, digest = _result_file(tmp_path, "big.pkl", b"x" * 100_000)
    b = _task(store, result_ref=ref, result_digest=digest)
    assert store.payload(a) == b"payload-bytes" and store.payload(lazy.id) == b"made-by-the-writer"
    assert store.result_bytes(a) == b"inline-result"
    assert store.result_bytes(b) == b"x" * 100_000
    assert store.task(b).result_ref == ref
    stored = raw(store, a, "payload")
    assert stored is not None and stored != b"payload-bytes" and stored.endswith(b"payload-bytes")
    assert stored[0] == 1 and len(stored) == len(b"payload-bytes") + 41


@pytest.mark.parametrize("how", ["unsigned", "forged", "moved"])
def test_a_tampered_payload_is_refused(store: Store, tmp_path: Path, how: str) -> None:
    victim, other = _task(store), _task(store, payload=b"another task's payload")
    signed = raw(store, victim, "payload")
    assert signed is not None
    planted = {"unsigned": planted_pickle(tmp_path / "ran"), "forged": forged(planted_pickle(tmp_path / "ran"), signed),
               "moved": raw(store, other, "payload")}[how]  # fmt: skip
    set_raw(store, victim, payload=planted)
    want = {"unsigned": "payload is not signed", "forged": "signature of its payload does not match",
            "moved": "signature of its payload does not match"}[how]  # fmt: skip
    with pytest.raises(UntrustedData, match=rf"^task {victim}: .*{want}.*refusing to unpickle it"):
        store.payload(victim)
    assert store.payload(other) == b"another task's payload"


@pytest.mark.parametrize("how", ["unsigned", "forged", "from the payload column"])
def test_a_tampered_inline_result_is_refused(store: Store, tmp_path: Path, how: str) -> None:
    tid = _task(store, result=b"the result")
    signed = raw(store, tid, "result")
    assert signed is not None
    planted = {"unsigned": planted_pickle(tmp_path / "ran"), "forged": forged(planted_pickle(tmp_path / "ran"), signed),
               "from the payload column": raw(store, tid, "payload")}[how]  # fmt: skip
    set_raw(store, tid, result=planted)
    with pytest.raises(UntrustedData, match=rf"^task {tid}: .*its result (is not signed|does not match)"):
        store.result_bytes(tid)


def test_a_replaced_result_file_is_refused(store: Store, tmp_path: Path) -> None:
    ref, digest = _result_file(tmp_path, "r.pkl", b"what the worker wrote")
    tid = _task(store, result_ref=ref, result_digest=digest)
    assert store.result_bytes(tid) == b"what the worker wrote"
    Path(ref).write_bytes(planted_pickle(tmp_path / "ran"))
    with pytest.raises(UntrustedData, match=rf"^task {tid}: its result file {ref} is not the file its worker wrote"):
        store.result_bytes(tid)
    # another task's file record, pointed at this task: bound to its task id
    other_ref, other_digest = _result_file(tmp_path, "o.pkl", b"other")
    other = _task(store, result_ref=other_ref, result_digest=other_digest)
    set_raw(store, tid, result=raw(store, other, "result"))
    with pytest.raises(UntrustedData, match=rf"^task {tid}: the signature of its result does not match"):
        store.result_bytes(tid)


def test_an_unsigned_legacy_result_file_is_refused(store: Store, tmp_path: Path) -> None:
    ref, _ = _result_file(tmp_path, "legacy.pkl", planted_pickle(tmp_path / "ran"))
    tid = _task(store, result_ref=ref)  # no digest: what balsam_dask stored before it signed
    with pytest.raises(UntrustedData, match=rf"^task {tid}: its result file {ref} has no signed record"):
        store.result_bytes(tid)


def test_the_key_file_is_private(store_url: str, umask_022: None) -> None:
    with Store(store_url) as store:
        _task(store)
        key = Path(store.key_file)
        assert mode(key) == 0o600 and len(key.read_text().strip()) == 64
        if store.dialect == "sqlite":
            assert str(key) == f"{store.url.database}.key"
        else:  # per user, under $XDG_CONFIG_HOME (the tests' own): keys/ and balsam_dask/ are 0700
            assert key.parent.name == "keys" and key.parent.parent.name == "balsam_dask"
            assert str(key).startswith(os.environ["XDG_CONFIG_HOME"])
            assert mode(key.parent) == mode(key.parent.parent) == 0o700
        assert [p.name for p in key.parent.iterdir() if p.name.startswith(f".{key.name}")] == []  # no temporaries


def test_concurrent_first_uses_make_one_key(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "keys" / "k.key"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def first_use() -> None:
        start.wait()
        keys.append(Signer(path).key())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["k.key"]
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_a_key_file_others_can_read_is_refused(store: Store) -> None:
    tid = _task(store)
    os.chmod(store.key_file, 0o640)
    loose = r"may be read or written by others \(mode 0640\).*chmod 600"
    with Store(store.url) as again, pytest.raises(KeyFileError, match=loose):
        again.payload(tid)


def test_a_store_that_holds_signed_data_gets_no_new_key(store: Store, tmp_path: Path) -> None:
    tid = _task(store)
    key = Path(store.key_file)
    key.rename(tmp_path / "elsewhere.key")
    with Store(store.url) as again:
        with pytest.raises(WrongKey, match=rf"^task {tid}: its payload cannot be verified: there is no key file {key}"):
            again.payload(tid)
        with pytest.raises(KeyFileError, match=rf"there is no key file {key}, and the store .* holds data signed"):
            _task(again)
    assert not key.exists()
    (tmp_path / "elsewhere.key").rename(key)
    with Store(store.url) as again:
        assert again.payload(tid) == b"payload-bytes"


def test_the_key_file_option_and_environment_variable(store_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    mine = tmp_path / "mine.key"
    with Store(store_url, key_file=mine) as store:
        tid = _task(store)
    assert mode(mine) == 0o600
    Signer(tmp_path / "other.key").key()
    with Store(store_url, key_file=tmp_path / "other.key") as other:
        with pytest.raises(
            WrongKey, match=rf"^task {tid}: its payload was signed with another key \(id [0-9a-f]{{16}}\)"
        ):
            other.payload(tid)
    monkeypatch.setenv(KEY_ENV, str(mine))
    with Store(store_url) as store:
        assert store.key_file == str(mine) and store.payload(tid) == b"payload-bytes"
    with pytest.raises(KeyFileError, match=r"key_file='' is invalid"):
        Store(store_url, key_file="")


def test_the_sqlite_file_and_its_wal_are_private(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "private.db"
    with Store(f"sqlite:///{db}") as store:
        _task(store)
        files = {p: mode(p) for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))}
        assert files == dict.fromkeys(files, 0o600)


def test_a_read_only_store_is_never_written(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    with Store(f"sqlite:///{db}") as store:
        tid = _task(store)
    with Store(f"sqlite:///{db}", read_only=True) as ro:
        assert ro.payload(tid) == b"payload-bytes" and ro.task(tid).has_payload
        with pytest.raises(StoreReadOnly, match=r"opened read-only"):
            _task(ro)
    os.chmod(db, 0o444)  # not writable by its mode: refused even for root
    with pytest.raises(StoreReadOnly, match=rf"cannot write the store sqlite:///{db}: the store file {db} is not "
                                            r"writable \(mode 0444"):  # fmt: skip
        Store(f"sqlite:///{db}")
    with Store(f"sqlite:///{db}", read_only=True) as ro:
        assert ro.task(tid).id == tid
