"""Objects in S3-compatible storage (``s3://bucket/prefix``) through boto3, for the object layout.

boto3 rather than obstore or s3fs (docs/stores.md): it is AWS's own client, kept in step with
the S3 API (conditional writes, which claim snapshot numbers, came to it first), reads the whole
standard credential chain (environment, ``~/.aws/config`` profiles, SSO, instance and container
roles) and speaks to MinIO, Ceph and the others with ``endpoint_url``; it is thread-safe, so
uploads and page reads run on a pool; and it is pure Python over botocore (no native wheel a
machine of another architecture may lack). s3fs adds an fsspec layer over aiobotocore whose
file semantics the layout does not need; obstore is fast but a native extension, younger, and
its conditional-put support varies by version.

Endpoint: ``WASMIG_S3_ENDPOINT`` (else ``AWS_ENDPOINT_URL``, which botocore reads itself), for
MinIO-like servers; credentials and region from the standard chain (region us-east-1 if none).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from wasmig.errors import SnapshotError
from wasmig.snapshot.stores.backend import ObjectInfo

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 60
#: an object larger than this goes up as a multipart upload, in parts of _MULTIPART_CHUNK in parallel
_MULTIPART_THRESHOLD = 8 << 20
_MULTIPART_CHUNK = 8 << 20


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise SnapshotError("s3:// stores need boto3: pip install 'wasmig[s3]'") from None
    return boto3


class S3Objects:
    """An :class:`~wasmig.snapshot.stores.backend.ObjectBackend` on one bucket."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = client
        self._errors = _error_types()
        self._checked = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> S3Objects:
        m = re.fullmatch(r"s3://([^/?#]*)(?:/([^?#]*))?", url)
        if not m or not _BUCKET_RE.fullmatch(m.group(1)) or ".." in m.group(1):
            raise SnapshotError(f"{url}: not an S3 store URL (s3://bucket/prefix, the bucket 3-63 characters "
                                "of a-z, 0-9, '.', '-')")
        prefix = (m.group(2) or "").strip("/")
        if prefix.startswith(".wasmig") or any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise SnapshotError(f"{url}: the prefix must be a plain path (no empty, '.', '..' or .wasmig parts)")
        return cls(m.group(1), prefix + "/" if prefix else "", _client())

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, location: str) -> str | None:
        head = f"s3://{self.bucket}/"
        return location[len(head):] if location.startswith(head) else None

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        """``fn(Bucket=..., **kwargs)``; a missing key is None, everything else a one-line SnapshotError."""
        client_error, boto_error = self._errors
        where = self.location(key) if key else f"s3://{self.bucket}"
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except client_error as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (status == 404 and code in ("404", "NotFound") and what == "reach the bucket"):
                raise SnapshotError(f"s3://{self.bucket}: no such bucket") from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return None
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                raise _Exists from None
            message = e.response.get("Error", {}).get("Message") or code
            raise SnapshotError(f"{where}: cannot {what}: {code}: {message}") from None
        except boto_error as e:
            raise SnapshotError(f"{where}: cannot {what}: {' '.join(str(e).split())}") from None

    def get(self, key: str, limit: int) -> bytes | None:
        r = self._call("read", key, self._client.get_object, Key=key)
        if r is None:
            return None
        body = r["Body"]
        try:
            size = int(r.get("ContentLength", -1))
            if size > limit:  # from the response's headers, before the body is read
                raise SnapshotError(f"{self.location(key)}: {size} bytes, more than the {limit} it may be")
            data = self._read_body(key, body, limit)
        finally:
            body.close()
        if len(data) > limit:
            raise SnapshotError(f"{self.location(key)}: more than the {limit} bytes it may be")
        return data

    def _read_body(self, key: str, body: Any, limit: int) -> bytes:
        _, boto_error = self._errors
        try:
            return bytes(body.read(limit + 1))
        except (OSError, boto_error) as e:
            raise SnapshotError(f"{self.location(key)}: cannot read: {' '.join(str(e).split())}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        if length <= 0:
            return b""
        r = self._call("read", key, self._client.get_object, Key=key, Range=f"bytes={start}-{start + length - 1}")
        if r is None:
            return None
        body = r["Body"]
        try:
            return self._read_body(key, body, length - 1)  # at most ``length``: the range asked for
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo | None:
        r = self._call("look at", key, self._client.head_object, Key=key)
        if r is None:
            return None
        return ObjectInfo(key, int(r.get("ContentLength", 0)), r["LastModified"].timestamp())

    def put(self, key: str, data: bytes) -> None:
        if len(data) <= _MULTIPART_THRESHOLD:
            self._call("write", key, self._client.put_object, Key=key, Body=data)
            return
        self._put_multipart(key, data)

    def _put_multipart(self, key: str, data: bytes) -> None:
        """A multipart upload, its parts in parallel (boto3's transfer manager): the object appears
        whole when the upload completes, or not at all."""
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig

        client_error, boto_error = self._errors
        config = TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=_MULTIPART_CHUNK,
                                max_concurrency=8, use_threads=True)
        try:
            self._client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=config)
        except (client_error, boto_error, Boto3Error) as e:
            raise SnapshotError(f"{self.location(key)}: cannot write: {' '.join(str(e).split())}") from None

    def put_new(self, key: str, data: bytes) -> bool:
        try:
            self._call("write", key, self._client.put_object, Key=key, Body=data, IfNoneMatch="*")
        except _Exists:
            return False
        return True

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            r = self._call("list", prefix, self._client.list_objects_v2, **kwargs)
            if r is None:
                raise SnapshotError(f"s3://{self.bucket}: no such bucket")
            for o in r.get("Contents", []):
                yield ObjectInfo(o["Key"], int(o.get("Size", 0)), o["LastModified"].timestamp())
            token = r.get("NextContinuationToken") if r.get("IsTruncated") else None
            if not token:
                return

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client.delete_object, Key=key)

    def move(self, src: str, dst: str) -> None:
        """Server-side copy (a new object, so its LastModified is now), then delete."""
        r = self._call("copy", src, self._client.copy_object, Key=dst,
                       CopySource={"Bucket": self.bucket, "Key": src})
        if r is not None:
            self.delete(src)

    def check(self) -> None:
        self._call("reach the bucket", "", self._client.head_bucket)
        key = f"{self.prefix}.wasmig-probe-{os.getpid()}-{time.monotonic_ns()}"
        self.put(key, b"")
        self.delete(key)

    def check_root(self) -> None:
        self._call("reach the bucket", "", self._client.head_bucket)

    def stale_temporaries(self, older_than_s: float) -> int:
        return 0  # an S3 put is atomic: a killed writer leaves no partial object


class _Exists(Exception):
    """A conditional put found the key taken."""


def _error_types() -> tuple[type[BaseException], type[BaseException]]:
    _import_boto3()
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def check_endpoint(endpoint: str | None) -> None:
    """Nothing crosses a network in clear: an endpoint is ``https``, or plain ``http`` only on
    loopback (a test server, or a local proxy that itself speaks TLS). A one-line SnapshotError
    otherwise, before any request is made."""
    if not endpoint:
        return  # AWS itself: botocore speaks https
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise SnapshotError(f"S3 endpoint {endpoint}: snapshots travel only over https "
                            "(plain http is accepted on loopback only)")


def _client() -> Any:
    """An S3 client from the standard chain, with ``WASMIG_S3_ENDPOINT`` and bounded timeouts."""
    check_endpoint(os.environ.get("WASMIG_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"))
    boto3 = _import_boto3()
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(connect_timeout=_CONNECT_TIMEOUT_S, read_timeout=_READ_TIMEOUT_S,
                    retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
    try:
        session = boto3.session.Session()
        region = session.region_name or "us-east-1"
        return session.client("s3", endpoint_url=os.environ.get("WASMIG_S3_ENDPOINT") or None,
                              region_name=region, config=config)
    except (BotoCoreError, ValueError) as e:
        raise SnapshotError(f"cannot set up the S3 client: {' '.join(str(e).split())}") from None
