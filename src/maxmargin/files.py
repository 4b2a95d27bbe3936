"""Every file the project writes: atomically, and the ones a later command trusts with a SHA-256.

A killed run or evaluation must never leave a half-written ``eval.json`` or
checkpoint that a later ``--resume`` or ``maxmargin report`` would trust. Each
writer fills a temporary file in the target's own folder (``os.replace`` is
atomic only within one file system), flushes it to disk, renames it over the
target, and removes the temporary file if anything fails on the way. A write
that fails (a full disk, a file-size limit, no permission) is a
:class:`WriteError`: one line naming the file and the cause; the previous
file stays as it was.

Atomic renames do not protect a file after it is written: a flipped bit on
disk or a partial copy between machines. So checkpoints, ``margins.pt``,
``eval.json`` and ``margins.json`` carry a SHA-256 of their content, checked
when they are read:

- torch files (:func:`save_torch_atomic`) stay plain ``torch.save`` zip
  archives that ``torch.load`` opens as before; the digest sits in the zip
  archive's comment, the last bytes of the file: ``MAXMARGIN-SHA256 <hex>``
  over the bytes ``torch.save`` wrote.
- JSON files (:func:`dumps_sealed`) end with a ``"sha256"`` field over
  ``json.dumps(rest, indent=2)``; the file must also be exactly what
  re-serializing its content gives, so a changed space is caught too.

Files written before the checksums still load, with a one-line notice on
stderr; a mismatch is a :class:`CorruptFileError`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError

__all__ = ["atomic_path", "save_torch_atomic", "write_bytes_atomic", "write_text_atomic", "write_with",
           "WriteError", "CorruptFileError", "seal_zip", "read_sealed_zip", "load_torch_checked", "dumps_sealed",
           "write_json_sealed", "read_json_sealed"]


class WriteError(UserError):
    """A file could not be written; the message names it, the cause and what to do. The old file is unchanged."""

    def __init__(self, path: str | Path, cause: OSError, then: str = "run the command again") -> None:
        self.path, self.cause = Path(path), cause
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"could not write {path}: {reason}; {_remedy(cause)} and {then}")

    def then(self, what: str) -> WriteError:
        """The same error with another next step (``continue with --resume``)."""
        return WriteError(self.path, self.cause, what)


def _remedy(cause: OSError) -> str:
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space"
    if cause.errno == errno.EFBIG:
        return "raise the file-size limit (ulimit -f) or free space"
    if cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable"
    return "fix the cause"


class CorruptFileError(UserError):
    """A file fails its checksum, is truncated, or is of a format this version does not read."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; on a clean exit its file replaces ``path``, else it is removed.

    For writers that insist on a file name (``Figure.savefig``, ``torch.save``
    of a path). The name keeps ``path``'s suffix, so a writer that picks its
    format by suffix still sees the right one. An ``OSError`` on the way (in
    the caller's writing too) becomes a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    # the process id keeps two writers of one file apart; not mkstemp, whose 0600 mode would hide
    # results from other users where a plain open leaves them readable (the umask decides)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, e) from e
    finally:
        # a full disk can refuse even this; the write's own error is the one to report
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file object whose content atomically becomes ``path``."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        write(f)
        f.flush()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_with(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode(encoding))


# ---------------------------------------------------------------- torch files: the digest in the zip comment

MAGIC = b"MAXMARGIN-SHA256 "
TRAILER = len(MAGIC) + 64
_EOCD = b"PK\x05\x06"         # signature of a zip archive's end record: 22 bytes, the last 2 its comment's length
_EOCD_LEN = 22


def seal_zip(data: bytes) -> bytes:
    """``data`` (a zip archive without a comment, as ``torch.save`` writes) with its SHA-256 as the comment."""
    if len(data) < _EOCD_LEN or data[-_EOCD_LEN:-_EOCD_LEN + 4] != _EOCD or data[-2:] != b"\0\0":
        raise ValueError("seal_zip needs a zip archive that ends with its end record and no comment")
    digest = hashlib.sha256(data).hexdigest().encode()
    return data[:-2] + TRAILER.to_bytes(2, "little") + MAGIC + digest


def _notice_unchecked(path: Path) -> None:
    print(f"maxmargin: note: {path} has no checksum (written before maxmargin checked its files); "
          "loading it unchecked", file=sys.stderr)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except OSError as e:
        raise UserError(f"could not read {path}: {e.strerror or e}") from None


def read_sealed_zip(path: str | Path, what: str = "maxmargin checkpoint",
                    fix: str = "restore it or retrain") -> tuple[bytes, bool]:
    """The bytes of the torch file ``path`` (its comment ``torch.load`` skips), and whether a checksum vouched for them.

    A file with a checksum that does not match, or that does not end like a
    zip archive (a partial copy), is a :class:`CorruptFileError` naming
    ``path`` and ``fix``; a zip archive without one (written before the
    checksums) comes back unchecked.
    """
    path = Path(path)
    data = _read(path)
    n, end = len(data), len(data) - TRAILER
    if end >= _EOCD_LEN and data[end - _EOCD_LEN:end - _EOCD_LEN + 4] == _EOCD:
        # the digest is of what torch.save wrote: the archive with an empty comment (length 0)
        sha = hashlib.sha256(memoryview(data)[:end - 2])
        sha.update(b"\0\0")
        if (data[end - 2:end] != TRAILER.to_bytes(2, "little") or data[end:end + len(MAGIC)] != MAGIC
                or sha.hexdigest().encode() != data[end + len(MAGIC):]):
            raise CorruptFileError(f"{path} is corrupt: its SHA-256 does not match (a flipped bit or a partial "
                                   f"copy); {fix}")
        return data, True
    if n >= _EOCD_LEN and data[-_EOCD_LEN:-_EOCD_LEN + 4] == _EOCD and data[-2:] == b"\0\0":
        return data, False
    if data[:4] == b"PK\x03\x04":
        raise CorruptFileError(f"{path} is truncated or damaged: its {n} bytes lack the end of a {what} (a partial "
                               f"copy or an interrupted write by another program); {fix}")
    raise CorruptFileError(f"{path} is not a {what}: it is no torch zip archive ({n} bytes, starting "
                           f"{data[:8]!r}); {fix}")


def cause_of(e: BaseException) -> str:
    """The complete first sentence of an exception's message (torch's run to paragraphs of advice)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    # weights_only refusals open with "Weights only load failed." and name the reason further down
    first = next((line for line in lines if "WeightsUnpickler error:" in line), lines[0])
    cut = first.find(". ")
    return first[:cut + 1] if cut > 0 else first


def load_torch_checked(path: str | Path, map_location: Any = None, what: str = "maxmargin checkpoint",
                       fix: str = "restore it or retrain", accept: Callable[[Any], None] | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` after checking the file's SHA-256 (see :func:`read_sealed_zip`).

    ``accept(obj)`` may raise a :class:`UserError` for content of the wrong
    kind; a file without a checksum that passes gets a notice on stderr.
    """
    import pickle
    import zipfile

    import torch

    data, checked = read_sealed_zip(path, what, fix)
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        state = "is not" if checked else "is truncated or not"
        raise CorruptFileError(f"{path} {state} a {what}: {cause_of(e)}; {fix}") from None
    if accept is not None:
        accept(obj)
    if not checked:
        # after the checks: a file refused anyway gets its one line of error, not a notice too
        _notice_unchecked(Path(path))
    return obj


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically and with its SHA-256 (same argument order as ``torch.save``).

    ``torch.load`` reads the file as ever; :func:`load_torch_checked` checks it first.
    """
    import torch  # here, not at the top: config.py imports this module, and `maxmargin presets` needs no torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, seal_zip(buf.getvalue()))


# ---------------------------------------------------------------- JSON files: a "sha256" field

def dumps_sealed(body: dict[str, Any], fmt: str | None = None) -> str:
    """``body`` as indented JSON, ``{"format": fmt}`` first if given, a ``"sha256"`` field of the rest last."""
    if fmt is not None:
        body = {"format": fmt, **{k: v for k, v in body.items() if k != "format"}}
    body = {k: v for k, v in body.items() if k != "sha256"}
    digest = hashlib.sha256(json.dumps(body, indent=2).encode()).hexdigest()
    return json.dumps({**body, "sha256": digest}, indent=2)


def write_json_sealed(path: str | Path, body: dict[str, Any], fmt: str | None = None) -> None:
    """Write :func:`dumps_sealed` of ``body`` to ``path`` atomically."""
    write_text_atomic(path, dumps_sealed(body, fmt))


def read_json_sealed(path: str | Path, fmt: str | None = None, fix: str = "restore it or write it again",
                     required: Sequence[str] = (), kind: str = "a maxmargin file") -> dict[str, Any]:
    """A JSON object written by :func:`write_json_sealed`, its checksum and format checked (both fields removed).

    A file without ``"sha256"`` (written before the checksums) loads after a
    notice on stderr. With ``fmt``, a ``"format"`` other than ``fmt`` (a newer
    maxmargin's) is refused; a file without one is of the first format. A
    file without every ``required`` key is not ``kind``.
    """
    path = Path(path)
    raw = _read(path)
    try:
        text = raw.decode("utf-8")
        body = json.loads(text)
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path} is corrupt: not UTF-8 text (a flipped bit or a partial copy); {fix}") from None
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path} is corrupt or truncated: not valid JSON ({e}); {fix}") from None
    if not isinstance(body, dict):
        raise CorruptFileError(f"{path} is not a maxmargin file: it holds a JSON {type(body).__name__}, "
                               f"not an object; {fix}")
    checked = "sha256" in body
    if checked:
        digest = body.pop("sha256")
        if (not isinstance(digest, str) or json.dumps({**body, "sha256": digest}, indent=2) != text
                or hashlib.sha256(json.dumps(body, indent=2).encode()).hexdigest() != digest):
            raise CorruptFileError(f"{path} is corrupt: its SHA-256 does not match (a flipped bit, a partial copy "
                                   f"or an edit; delete its \"sha256\" line to accept an edit); {fix}")
    if fmt is not None and "format" in body:
        found = body.pop("format")
        if found != fmt:
            raise CorruptFileError(f"{path}: field \"format\" is {found!r}, but this maxmargin reads {fmt!r} "
                                   "(a newer maxmargin wrote it?); upgrade maxmargin or write the file again")
    missing = [k for k in required if k not in body]
    if missing:
        raise CorruptFileError(f"{path} lacks {', '.join(missing)}: not {kind}; {fix}")
    if not checked:
        _notice_unchecked(path)
    return body
