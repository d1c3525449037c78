"""Signed pickles: nothing stored is unpickled unless this user's key signed it.
(Design notes: docs/ARCHITECTURE.md, store/signing.py.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import URL

from balsam_dask.errors import KeyFileError, UntrustedData, WrongKey
from balsam_dask.private import FILE_MODE, open_private, private_dir
from balsam_dask.store.engine import display

KEY_ENV = "BALSAM_DASK_KEY_FILE"
FORMAT_DATA = 1
FORMAT_FILE = 2
KEY_BYTES = 32
ID_SIZE = 8
TAG_SIZE = 32
_HEAD = 1 + ID_SIZE + TAG_SIZE
_DOMAIN = b"balsam-dask signed\0"
_UNSIGNED = "is not signed (stored by a balsam_dask before it signed its store, or not by balsam_dask)"


def default_key_file(url: URL) -> Path:
    """Where the key of the store at ``url`` lives unless one is given (see the module doc)."""
    if url.get_backend_name() == "sqlite":
        return Path(f"{url.database}.key")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    name = hashlib.sha256(display(url).encode()).hexdigest()[:32]
    return Path(base) / "balsam_dask" / "keys" / f"{name}.key"


def signer_for(url: URL, key_file: str | os.PathLike[str] | None = None,
               guard: Callable[[], str | None] | None = None) -> Signer:  # fmt: skip
    """The signer of the store at ``url``, with the key file ``key_file``, else
    ``$BALSAM_DASK_KEY_FILE``, else :func:`default_key_file`. ``guard()`` says why no new key
    may be made (the store holds signed data), or None."""
    given = key_file if key_file is not None else os.environ.get(KEY_ENV) or None
    if given is None:
        return Signer(default_key_file(url), per_user_dir=url.get_backend_name() != "sqlite", guard=guard)
    if not isinstance(given, (str, os.PathLike)) or not os.fspath(given):
        raise KeyFileError(f"key_file={given!r} is invalid: give a path, e.g. key_file='~/.balsam.key'")
    return Signer(Path(os.path.expanduser(os.fspath(given))).absolute(), guard=guard)


def _load(path: Path) -> bytes:
    """The key in ``path`` (FileNotFoundError if there is none); KeyFileError if others may
    read or write it, it is not the user's, or it is malformed."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:  # permission, a directory...
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"the key file {path} may be read or written by others (mode {mode:04o}): "
                           f"anyone who can read it can forge what this store holds; chmod 600 {path}")  # fmt: skip
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"the key file {path} belongs to another user (uid {st.st_uid}): copy it to a file of "
                           f"your own (mode 0600) and give it with key_file= or ${KEY_ENV}")  # fmt: skip
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"the key file {path} is malformed: it should hold {2 * KEY_BYTES} hex digits "
                           "(as balsam_dask writes them)")  # fmt: skip
    return key


def _create(path: Path) -> None:
    """Write a new key to ``path`` unless it exists: a private temporary file, linked into
    place (atomic, and it never replaces another process's key)."""
    private_dir(path.parent)  # made 0700 if missing; an existing directory is left as it is
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = open_private(tmp, os.O_WRONLY | os.O_EXCL)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process made it first: theirs is the key
        pass
    except OSError:  # a filesystem without hard links: exclusive create, then the bytes
        _create_in_place(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def _create_in_place(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_keys_dir(path: Path) -> None:
    """The per-user keys directory and its balsam_dask parent: made 0700, or made so."""
    for d in (path.parent.parent, path.parent):
        private_dir(d)
        st = os.stat(d)
        if stat.S_IMODE(st.st_mode) & 0o077:
            if st.st_uid != os.geteuid():
                raise KeyFileError(f"the key directory {d} is open to others and not yours: give key_file=")
            os.chmod(d, 0o700)


def key_id(key: bytes) -> bytes:
    """A short public name of a key (stored with each signature: which key signed it)."""
    return hashlib.sha256(b"balsam-dask key id\0" + key).digest()[:ID_SIZE]


class Signer:
    """Signs and verifies the pickles of one store with the key in ``path`` (loaded, or
    made, on first use)."""

    def __init__(self, path: Path, *, per_user_dir: bool = False,
                 guard: Callable[[], str | None] | None = None) -> None:  # fmt: skip
        self.path = path
        self._per_user_dir = per_user_dir  # the default PostgreSQL place: keep its directories private
        self._guard = guard
        self._key: bytes | None = None
        self._id = b""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Signer({str(self.path)!r})"

    def key(self, *, create: bool = True) -> bytes:
        """The key; made if there is none and ``create`` (else FileNotFoundError)."""
        key = self._key
        if key is not None:
            return key
        with self._lock:
            if self._key is None:
                try:
                    key = _load(self.path)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._make()
                    key = _load(self.path)
                self._id = key_id(key)
                self._key = key
            return self._key

    def _make(self) -> None:
        problem = self._guard() if self._guard is not None else None
        if problem:
            raise KeyFileError(f"there is no key file {self.path}, and {problem}: copy the key file of the user and "
                               f"host that wrote it here, or give it with key_file= or ${KEY_ENV} (if it is lost, "
                               f"start a new one: (umask 077; openssl rand -hex 32 > {self.path}); what it "
                               "signed can then not be resumed)")  # fmt: skip
        try:
            if self._per_user_dir:
                _private_keys_dir(self.path)
            _create(self.path)
        except OSError as e:
            raise KeyFileError(f"cannot create the key file {self.path}: {e.strerror or e}; "
                               f"give another with key_file= or ${KEY_ENV}") from None  # fmt: skip

    @property
    def key_id(self) -> bytes:
        self.key(create=False)
        return self._id

    @staticmethod
    def _tag(key: bytes, column: str, task_id: int, fmt: int, body: bytes) -> bytes:
        # one C call over one buffer: the cheapest HMAC here (~3 us for a payload of 1 KB)
        return hmac.digest(key, b"%s%s\0%d\0%d\0%s" % (_DOMAIN, column.encode(), task_id, fmt, body), "sha256")

    # --- writing ---
    def sign(self, column: str, task_id: int, data: bytes) -> bytes:
        """``data`` (a pickle) as stored in ``column`` of task ``task_id``."""
        key = self.key()
        return b"%c%s%s%s" % (FORMAT_DATA, self._id, self._tag(key, column, task_id, FORMAT_DATA, data), data)

    def sign_file(self, task_id: int, path: str, digest: bytes) -> bytes:
        """The stored record of a result in a file: its path and the SHA-256 ``digest`` the
        worker computed of what it wrote."""
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise ValueError(f"result_digest of task {task_id} must be 32 bytes (a SHA-256 digest), not {digest!r}")
        key = self.key()
        body = digest + os.fsencode(path)
        return b"%c%s%s%s" % (FORMAT_FILE, self._id, self._tag(key, "result", task_id, FORMAT_FILE, body), body)

    # --- reading ---
    def _open(self, column: str, task_id: int, blob: bytes, what: str) -> tuple[int, bytes]:
        if len(blob) < _HEAD or blob[0] not in (FORMAT_DATA, FORMAT_FILE):
            raise UntrustedData(task_id, f"its {what} {_UNSIGNED}")
        try:
            key = self.key(create=False)
        except FileNotFoundError:
            raise WrongKey(task_id, f"its {what} cannot be verified: there is no key file {self.path} (the key of "
                                    "the user and host that wrote the store: copy it here, or give it with "
                                    f"key_file= or ${KEY_ENV})") from None  # fmt: skip
        fmt, kid, tag, body = blob[0], blob[1 : 1 + ID_SIZE], blob[1 + ID_SIZE : _HEAD], blob[_HEAD:]
        if kid != self._id:
            raise WrongKey(task_id, f"its {what} was signed with another key (id {kid.hex()}) than the one in "
                                    f"{self.path} (id {self._id.hex()}): give that key with key_file= or "
                                    f"${KEY_ENV}")  # fmt: skip
        if not hmac.compare_digest(tag, self._tag(key, column, task_id, fmt, body)):
            raise UntrustedData(task_id, f"the signature of its {what} does not match (it was altered, or copied "
                                         "from another task or column)")  # fmt: skip
        return fmt, body

    def open_payload(self, task_id: int, blob: bytes) -> bytes:
        """The verified payload of a task (its stored form in, the pickle out)."""
        fmt, body = self._open("payload", task_id, blob, "payload")
        if fmt != FORMAT_DATA:
            raise UntrustedData(task_id, f"its payload has format {fmt}, not {FORMAT_DATA}")
        return body

    def open_result(self, task_id: int, blob: bytes) -> bytes:
        """The verified result of a task: inline, or read from its file, whose SHA-256 must
        be the one recorded when it was written (OSError if the file cannot be read)."""
        fmt, body = self._open("result", task_id, blob, "result")
        if fmt == FORMAT_DATA:
            return body
        digest, path = body[:32], os.fsdecode(body[32:])
        with open(path, "rb") as f:  # read once: the bytes checked are the bytes returned
            data = f.read()
        if not hmac.compare_digest(hashlib.sha256(data).digest(), digest):
            raise UntrustedData(task_id, f"its result file {path} is not the file its worker wrote (its SHA-256 "
                                         "differs from the one recorded then)")  # fmt: skip
        return data
