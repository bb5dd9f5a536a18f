"""S3-compatible object storage (AWS S3, GCS's interoperability endpoint, MinIO, Ceph): the one boto3 client of ctx.

Credentials come only from boto3's standard places (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN,
AWS_PROFILE and ~/.aws, instance roles); the endpoint from CTX_S3_ENDPOINT_URL, else boto3's own AWS_ENDPOINT_URL;
the region from AWS_REGION/AWS_DEFAULT_REGION (us-east-1 when none is set). Nothing of them is ever printed.
Transfers are streamed from and to files in parts (TransferConfig): a 10 GB dump is never held in memory.
Every botocore failure becomes one CtxError naming the repository: credentials or bucket wrong (ConfigError,
exit 2), endpoint unreachable or failing (ServiceError, exit 3).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from ..config import Settings, redact_url
from ..errors import ConfigError, CtxError, ServiceError, UsageError

SCHEME = "s3://"
PART_BYTES = 16 * 1024 * 1024  # multipart above this, in parts this big: 10 000 parts (S3's limit) = 160 GB
CONCURRENCY = 4  # parts in flight per file: memory stays under CONCURRENCY x PART_BYTES
MAX_ATTEMPTS = 5  # botocore's "standard" retry mode: throttling, 5xx and dropped connections, with backoff
READ_TIMEOUT = 60.0  # seconds one request may wait for an answer once connected
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "403", "Forbidden"}
DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound", "InvalidBucketName"}
# S3's rules, widened to what older AWS buckets and GCS accept (upper case, underscores, up to 222): anything else
# (a port, a colon, a space) can only be a typing mistake, and botocore's own refusal of it read as a network fault
BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,220}[A-Za-z0-9]")


@dataclass(frozen=True)
class Location:
    """s3://bucket/prefix, the prefix without slashes at either end ('' for the bucket's top)."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)


def is_s3_url(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and text.lower().startswith(SCHEME)


def parse_url(text: str) -> Location:
    """`s3://bucket/some/prefix` -> Location; UsageError for anything else."""
    parts = urlsplit(text.strip())
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise UsageError(f"Not a repository URL: {shown(text)!r}",
                         hint="Write s3://BUCKET/PREFIX (credentials come from the AWS environment, never the URL).")
    if not BUCKET_NAME.fullmatch(parts.netloc):
        raise UsageError(f"Invalid bucket name {parts.netloc!r} in {shown(text)}",
                         hint="A bucket name has 3 or more letters, digits, dots or hyphens (s3://BUCKET/PREFIX; the "
                              "endpoint and its port go in CTX_S3_ENDPOINT_URL, not in the URL).")
    return Location(parts.netloc, parts.path.strip("/"))


def shown(text: str) -> str:
    """A repository URL fit to print: whatever precedes an `@` in its host part (keys typed into it) as ***."""
    head, sep, rest = text.partition("://")
    if not sep:
        return text
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{head}{sep}{netloc}{slash}{path}"


def endpoint_of(settings: Settings) -> str | None:
    return settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def where(settings: Settings, loc: Location) -> str:
    """The repository as the operator wrote it, with the endpoint when it is not AWS (no secret in either)."""
    endpoint = endpoint_of(settings)
    return f"{loc.url} (endpoint {redact_url(endpoint)})" if endpoint else loc.url


def client(settings: Settings, quick: bool = False):
    """A boto3 S3 client. `quick`: connect and read within CTX_TIMEOUT, one attempt (health); otherwise connect
    within CTX_TIMEOUT, READ_TIMEOUT per answer and MAX_ATTEMPTS in botocore's standard retry mode."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout if quick else READ_TIMEOUT,
        retries={"mode": "standard", "max_attempts": 1 if quick else MAX_ATTEMPTS},
        # integrity is ctx's own sha256 of every file; botocore's newer default checksums (trailing CRC headers)
        # are refused by GCS's interoperability API and older MinIO/Ceph
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_of(settings) else {},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    try:
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=endpoint_of(settings), config=config,
                              region_name=region or session.region_name or "us-east-1")
    except Exception as exc:
        raise translate(exc, settings, None) from exc


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=CONCURRENCY,
                          use_threads=True)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def translate(exc: BaseException, settings: Settings, loc: Location | None) -> CtxError:
    """The CtxError a botocore or boto3 failure means to the operator, naming the repository; never a secret."""
    import boto3.exceptions
    import botocore.exceptions as be

    if isinstance(exc, CtxError):
        return exc
    if isinstance(exc, boto3.exceptions.S3UploadFailedError) and isinstance(exc.__context__, be.ClientError):
        exc = exc.__context__  # upload_file wraps the service's answer (AccessDenied, NoSuchBucket ...) in its own
    name = where(settings, loc) if loc else "S3"
    creds_hint = ("Give the keys in ctx's environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE "
                  "with ~/.aws/credentials); for GCS, HMAC keys; for MinIO/GCS also CTX_S3_ENDPOINT_URL.")
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):
        return ConfigError(f"{name}: no S3 credentials found", hint=creds_hint)
    if isinstance(exc, be.ProfileNotFound):
        return ConfigError(f"{name}: AWS profile not found ({exc.kwargs.get('profile')})",
                           hint="Set AWS_PROFILE to a profile of ~/.aws/credentials, or unset it.")
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError, be.ReadTimeoutError,
                        be.ConnectionClosedError)):
        return ServiceError(f"{name}: object storage unreachable ({type(exc).__name__})", service="s3",
                            hint="Check CTX_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL), the network and the service's "
                                 "status; then run the command again (a backup is listed only once complete).")
    if isinstance(exc, be.ClientError):
        code = error_code(exc)
        if code in CREDENTIAL_CODES:
            return ConfigError(f"{name}: the S3 credentials were refused ({code})", hint=creds_hint)
        if code in DENIED_CODES:
            return ConfigError(f"{name}: access denied ({code})",
                               hint="Grant these keys s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject "
                                    "and s3:AbortMultipartUpload on the bucket and prefix.")
        if code in MISSING_BUCKET_CODES:
            return ConfigError(f"{name}: the bucket {loc.bucket if loc else ''} does not exist ({code})",
                               hint="Create the bucket first (ctx never creates one), or fix the URL or endpoint.")
        return ServiceError(f"{name}: object storage refused the request ({code or type(exc).__name__})",
                            service="s3", hint="Check the service's status and the bucket's settings; then try again.")
    if isinstance(exc, (be.BotoCoreError, boto3.exceptions.Boto3Error, ConnectionError, TimeoutError)):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ServiceError(f"{name}: object storage failed: {first}", service="s3",
                            hint="Check the endpoint and the network; then run the command again.")
    raise exc


class Bucket:
    """The calls ctx makes on one repository location, each turned into a CtxError naming it when it fails."""

    def __init__(self, settings: Settings, loc: Location, quick: bool = False):
        self.settings, self.loc = settings, loc
        self._client = client(settings, quick=quick)

    def _fail(self, exc: BaseException) -> CtxError:
        return translate(exc, self.settings, self.loc)

    def folder(self, under: str = "") -> str:
        """The key prefix of the location (or of `under` inside it), ending in '/'; '' for a bucket's top."""
        key = self.loc.key(under)
        return key + "/" if key else ""

    def check(self) -> None:
        """Bucket there, keys accepted, listing allowed: the cheapest call that proves all three."""
        try:
            self._client.list_objects_v2(Bucket=self.loc.bucket, Prefix=self.folder(), MaxKeys=1)
        except Exception as exc:
            raise self._fail(exc) from exc

    def objects(self, under: str = "") -> Iterator[dict]:
        """Every object (Key, Size, LastModified) below the location, or below `under` inside it."""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.loc.bucket, Prefix=self.folder(under))
            for page in pages:
                yield from page.get("Contents") or []
        except Exception as exc:
            raise self._fail(exc) from exc

    def upload(self, path: Path, key: str, callback: Callable[[int], None] | None = None) -> None:
        try:
            self._client.upload_file(str(path), self.loc.bucket, key, Config=transfer_config(), Callback=callback)
        except Exception as exc:
            raise self._fail(exc) from exc

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.loc.bucket, Key=key, Body=data)
        except Exception as exc:
            raise self._fail(exc) from exc

    def download(self, key: str, path: Path, callback: Callable[[int], None] | None = None) -> None:
        try:
            self._client.download_file(self.loc.bucket, key, str(path), Config=transfer_config(), Callback=callback)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise self._fail(exc) from exc
            raise ConfigError(f"No space left in {path.parent} while downloading s3://{self.loc.bucket}/{key}",
                              hint="Free space on that disk (ctx stages downloads in $CTX_HOME/staging), then run "
                                   "the command again.") from exc
        except Exception as exc:
            raise self._fail(exc) from exc

    def read(self, key: str) -> bytes | None:
        """A small object's bytes; None when it does not exist."""
        try:
            return self._client.get_object(Bucket=self.loc.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail(exc) from exc

    def stream(self, key: str, block: int = 1 << 20) -> Iterator[bytes]:
        """An object's bytes in blocks, as they arrive (a checksum of a large object without a local copy)."""
        try:
            body = self._client.get_object(Bucket=self.loc.bucket, Key=key)["Body"]
            yield from body.iter_chunks(block)
        except Exception as exc:
            raise self._fail(exc) from exc

    def delete(self, keys: list[str]) -> None:
        """One DeleteObject each: GCS's interoperability API has no multi-object delete."""
        try:
            for key in keys:
                self._client.delete_object(Bucket=self.loc.bucket, Key=key)
        except Exception as exc:
            raise self._fail(exc) from exc

    def stale_uploads(self, before: datetime) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads below the location begun before `before` (a killed upload's)."""
        found = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.loc.bucket, Prefix=self.folder()):
                for up in page.get("Uploads") or []:
                    if up["Initiated"] < before:
                        found.append((up["Key"], up["UploadId"]))
        except Exception as exc:
            if error_code(exc) in ("NotImplemented", "501"):  # a service without the listing has nothing to abort
                return []
            raise self._fail(exc) from exc
        return found

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.loc.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if error_code(exc) == "NoSuchUpload":
                return
            raise self._fail(exc) from exc
