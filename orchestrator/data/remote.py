"""Data in an object store (``s3://``, ``gs://``), checked before Ray starts.

A URI that points nowhere, an endpoint that does not answer and credentials the store refuses each
become one line that names the field and what to fix, instead of a Ray Data traceback minutes later or
a message about the folder's layout. The same wording serves the readers, which meet a missing bucket
or prefix when a sweep's driver or ``simclr eval`` lists the data.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from orchestrator.errors import UserError
from orchestrator.secrets import redact

FIX_ACCESS = ("check the endpoint (AWS_ENDPOINT_URL, for a store other than AWS) and the credentials "
              "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the node's role)")


def check(field: str, uri: str) -> None:
    """``uri`` exists in its store and this process may read it; else a UserError naming ``field``."""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{field}: cannot open {redact(uri)} ({_first_line(err)})") from err
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise unreadable(field, uri, err) from err
    if info.type == pafs.FileType.NotFound:
        raise missing(field, uri, fs, path)


def unreadable(field: str, uri: str, err: BaseException) -> UserError:
    return UserError(f"{field}: cannot read {redact(uri)} ({redact(_first_line(err))[:300]}); {FIX_ACCESS}")


def missing(field: str, uri: str, fs: pafs.FileSystem, path: str) -> UserError:
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
