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
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.errors import UserError
from orchestrator.secrets import redact

SCHEME = "://"
# Attempts of a storage request that meets a transient error (the endpoint away, throttling, a 5xx). The
# AWS SDK backs off exponentially, up to 20 s between attempts: 12 wait out about two minutes of outage,
# pyarrow's default of 3 only a few seconds.
STORAGE_ATTEMPTS = 12
FIX_ACCESS = ("check the endpoint (AWS_ENDPOINT_URL, for a store other than AWS) and the credentials "
              "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the node's role)")


def is_uri(path: str) -> bool:
    """``scheme://...`` (a bucket, a server, ``file://``), as opposed to a local path."""
    return SCHEME in path


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute (Tune and Ray Train run in other working directories)."""
    return path if is_uri(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def parent(path: str) -> str:
    """The folder that holds ``path`` (a URI's parent prefix)."""
    return path.rstrip("/").rsplit("/", 1)[0] if is_uri(path) else os.path.dirname(os.path.abspath(path))


def filesystem(path: str, field: str = "") -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path within it. With ``field``, a URI pyarrow cannot
    open (an unknown scheme, a malformed bucket) is a UserError naming that field."""
    try:
        return pafs.FileSystem.from_uri(absolute(path))  # a local path: any characters, no URI escaping
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        if not field:
            raise
        raise UserError(f"{field}: cannot open {redact(path)!r}: {first_line(err)}") from err


def resolve(paths: list[str], root: str, field: str) -> tuple[pafs.FileSystem, list[str]]:
    """A manifest's paths on the one filesystem that reads them, and each one's path within it: a relative
    path is under ``root``; an absolute path or a URI is itself (a URI of the same scheme as the others).
    ``field`` names the manifest in the errors."""
    relative = [not (is_uri(p) or os.path.isabs(p)) for p in paths]
    if any(relative) and not root:
        example = paths[relative.index(True)]
        raise UserError(f"data.root: {field}'s paths are relative (e.g. {example!r}); set data.root to the folder "
                        f"or bucket prefix they are relative to")
    reference = root or (paths[0] if paths else "")
    fs, base = filesystem(reference, "data.root" if root else field)
    scheme = reference.split(SCHEME, 1)[0] if is_uri(reference) else ""
    base = base.rstrip("/") if root else base
    inner: list[str] = []
    for path, rel in zip(paths, relative, strict=True):
        if rel:
            inner.append(f"{base}/{path}")
            continue
        own = path.split(SCHEME, 1)[0] if is_uri(path) else ""
        if own != scheme:
            raise UserError(f"{field}: {redact(path)!r} is not on the same store as {redact(reference)!r}; give the "
                            f"manifest's paths all local or all in one store (relative paths: under data.root)")
        inner.append(path.split(SCHEME, 1)[1].split("?", 1)[0] if own and own != "file" else
                     filesystem(path)[1] if own else os.path.abspath(path))
    return fs, inner


def relative(path: str, base: str) -> str | None:
    """``path`` (a path within a filesystem) relative to ``base`` in the same one; None when not under it."""
    base = base.rstrip("/")
    return path[len(base) + 1:] if path.startswith(base + "/") else None


def patient_filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``filesystem(path)`` for a run's checkpoints, written and read while the run trains.

    In S3 (or a store with its API), a request that meets a transient error is retried for about two
    minutes (``STORAGE_ATTEMPTS``) instead of seconds: while the endpoint is briefly away, a checkpoint
    upload, Ray Train's snapshot of its checkpoints and a restarted worker's look-up wait for it rather
    than fail the run. Errors that are not transient (a refused key, a missing bucket) fail at once.
    """
    fs, inner = filesystem(path)
    if isinstance(fs, pafs.S3FileSystem):
        _, (options,) = fs.__reduce__()  # the options from_uri resolved: region, endpoint, credentials
        fs = _patient_s3(options)
    return fs, inner


class _PatientS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with ``STORAGE_ATTEMPTS`` retries, kept when it is pickled to Ray Train's
    controller and workers: pyarrow's own pickling leaves the retry strategy out, and the copy retries
    as pyarrow does by default (a few seconds)."""

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        _, (options,) = super().__reduce__()
        return _patient_s3, (options,)


def _patient_s3(options: dict[str, Any]) -> _PatientS3FileSystem:
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=STORAGE_ATTEMPTS)
    return _PatientS3FileSystem(**{**options, "retry_strategy": retry})


def check_remote(field: str, uri: str) -> None:
    """``uri`` exists in its store and this process may read it; else one UserError naming ``field``: a
    missing bucket or prefix, an endpoint that does not answer, credentials the store refuses. Called
    before Ray starts, so that these are not a Ray Data traceback minutes later."""
    fs, path = filesystem(uri, field)
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise unreadable(field, uri, err) from err
    if info.type == pafs.FileType.NotFound:
        raise missing_remote(field, uri, fs, path)


def unreadable(field: str, uri: str, err: BaseException) -> UserError:
    return UserError(f"{field}: cannot read {redact(uri)} ({redact(first_line(err))[:300]}); {FIX_ACCESS}")


def missing_remote(field: str, uri: str, fs: pafs.FileSystem, path: str) -> UserError:
    """The error for a URI with nothing at it: its bucket does not exist, or no object or prefix in it does."""
    bucket, _, key = path.partition("/")
    try:
        no_bucket = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:  # the bucket cannot be asked about (permissions): say what is known
        no_bucket = False
    if no_bucket:
        return UserError(f"{field}: the bucket {bucket!r} of {redact(uri)} does not exist; create it or fix the "
                         f"URI (and AWS_ENDPOINT_URL, if the store is not AWS)")
    return UserError(f"{field}: nothing at {redact(uri)}: bucket {bucket!r} has no object or prefix {key!r}; "
                     f"fix the URI or upload the data there")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
        raise UserError(f"{field}: cannot write to {redact(folder)} ({redact(first_line(err))[:300]}); "
                        f"choose a writable folder or bucket") from err
