"""Reading files a user names (job specs, policy files, known_hosts, SSH keys, job
descriptions, templates): bounded, and every failure a one-line SlurmkitError.

A path can be anything: a FIFO (reading blocks until a writer comes, maybe never),
``/dev/zero`` (never ends), a symlink loop, a directory, a huge file, bytes that are
not UTF-8. ``read_bytes`` opens without blocking, refuses what is not a regular file,
and reads at most ``max_bytes``; ``read_text`` also decodes strictly and names the
line of a bad byte; ``load_toml`` parses, with nesting bombs refused.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from slurmkit.errors import SlurmkitError, UserInputError

#: Default cap: a job spec, a policy or a key file is a few KB.
MAX_BYTES = 1 << 20

_KIND = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISDIR, "a directory"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KIND if test(mode)), "not a regular file")


def _os_error(error: OSError, what: str, path: Path) -> SlurmkitError:
    reasons = {
        errno.ENOENT: "does not exist",
        errno.ENOTDIR: "does not exist (a part of the path is not a directory)",
        errno.EACCES: "cannot be read (permission denied)",
        errno.EPERM: "cannot be read (operation not permitted)",
        errno.ELOOP: "is a symbolic link loop",
        errno.EISDIR: "is a directory",
        errno.ENAMETOOLONG: "has a name that is too long",
        errno.ENXIO: "is a socket or a device without a reader",
    }
    if error.errno in reasons:
        return UserInputError(f"{what} {_shown(path)} {reasons[error.errno]}")
    # EIO, ENOMEM...: the machine failed, not the input.
    return SlurmkitError(f"cannot read {what} {_shown(path)}: {error.strerror or error}")


def _shown(path: Path | str) -> str:
    """The path for a one-line message: control characters escaped."""
    text = str(path)
    return repr(text)[1:-1] if not text.isprintable() else text


def read_bytes(path: str | os.PathLike, what: str = "file", *,
               max_bytes: int = MAX_BYTES) -> bytes:
    """The contents of the regular file ``path`` (symlinks followed), at most
    ``max_bytes``. Raises UserInputError for a missing, special, looping, unreadable
    or oversized file (SlurmkitError, exit 1, for I/O errors of the machine)."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once (then refused).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise _os_error(error, what, path) from None
    except ValueError:  # a NUL byte in the name
        raise UserInputError(f"{what} {_shown(path)}: the name contains a NUL byte") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserInputError(f"{what} {_shown(path)} is {_kind(info.st_mode)}, "
                                 "not a regular file: give the path of a file")
        if info.st_size > max_bytes:
            raise UserInputError(f"{what} {_shown(path)} is {info.st_size} bytes; the "
                                 f"limit is {max_bytes}")
        chunks = []
        left = max_bytes + 1  # one more byte tells a file that grew past the cap
        # One read of the whole file (plus one byte) usually ends it: a 31 MB recorded
        # output is then neither read in pieces nor copied to be joined.
        want = min(left, info.st_size + 1)
        while left > 0:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            want = min(left, 1 << 20)
    except OSError as error:
        raise _os_error(error, what, path) from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > max_bytes:
        raise UserInputError(f"{what} {_shown(path)} is larger than {max_bytes} bytes")
    return data


def decode(data: bytes, what: str) -> str:
    """Strict UTF-8; the error names the line and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserInputError(f"{what} is not valid UTF-8: byte 0x{data[error.start]:02x} on "
                             f"line {line}; save it as UTF-8") from None


def read_text(path: str | os.PathLike, what: str = "file", *,
              max_bytes: int = MAX_BYTES) -> str:
    """``read_bytes`` decoded as UTF-8 (see ``decode``)."""
    return decode(read_bytes(path, what, max_bytes=max_bytes), f"{what} {_shown(path)}")


def parse_toml(text: str, what: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"{what}: not valid TOML: {error}") from None
    except RecursionError:
        raise UserInputError(f"{what}: nested too deeply to be a configuration") from None


def load_toml(path: str | os.PathLike, what: str = "file", *,
              max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """A TOML file read through ``read_text``; every problem a UserInputError."""
    return parse_toml(read_text(path, what, max_bytes=max_bytes), f"{what} {_shown(path)}")
