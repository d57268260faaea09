"""Where files live: a local path or an object-store URI (``s3://bucket/x``, ``gs://``, ``file://``).

Every place that takes a path which may be a bucket asks this module: whether it is a URI, its
absolute form, the pyarrow filesystem that reads it, joining, listing, existence, small reads and
writes. Local paths stay plain paths (``os.path``); URIs are joined with ``/`` and reached through
``pyarrow.fs.FileSystem.from_uri``, which finds credentials and endpoints (``AWS_ENDPOINT_URL``) the way
Ray Train and Ray Data do.
"""

from __future__ import annotations

import os
import secrets

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.errors import UserError
from orchestrator.secrets import redact

SCHEME = "://"


def is_uri(path: str) -> bool:
    """``scheme://...`` (a bucket, a server, ``file://``), as opposed to a local path."""
    return SCHEME in path


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute (Tune and Ray Train run in other working directories)."""
    return path if is_uri(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def filesystem(path: str, field: str = "") -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path within it. With ``field``, a URI pyarrow cannot
    open (an unknown scheme, a malformed bucket) is a UserError naming that field."""
    try:
        return pafs.FileSystem.from_uri(absolute(path))  # a local path: any characters, no URI escaping
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        if not field:
            raise
        raise UserError(f"{field}: cannot open {path!r}: {err}") from err


def missing_locally(path: str, folder: bool = False) -> bool:
    """A local path that does not exist (or is not a folder, with ``folder``). URIs are not probed here:
    reaching a bucket needs credentials and time, and its reader reports a missing object itself."""
    if is_uri(path):
        return False
    return not (os.path.isdir(path) if folder else os.path.exists(path))


def kind(path: str) -> pafs.FileType:
    """File, Directory or NotFound."""
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type


def listing(folder: str) -> list[pafs.FileInfo]:
    """The entries directly in ``folder`` (none when it does not exist)."""
    fs, inner = filesystem(folder)
    return list(fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file, creating its folder."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def read_bytes(path: str) -> bytes | None:
    """A small file's bytes, or None when it does not exist."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return bytes(f.read())


def check_writable(folder: str, field: str) -> None:
    """Write and delete a small file in ``folder`` (created if need be): a folder that cannot be created,
    a read-only mount, a missing bucket or missing credentials are one line naming ``field``."""
    probe = f".simclr-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fs, base = filesystem(folder)
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{probe}") as f:
            f.write(b"ok")
        fs.delete_file(f"{base}/{probe}")
    except (OSError, ValueError, pa.ArrowException) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{field}: cannot write to {redact(folder)} ({redact(reason)[:300]}); "
                        f"choose a writable folder or bucket") from err
