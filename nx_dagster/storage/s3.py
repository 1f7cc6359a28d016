"""Object storage (S3 and S3-compatible servers) from the standard AWS settings.

Settings, the standard AWS ones, read by `nx_dagster.settings` (botocore's own resolution fills in what
is unset, so `~/.aws/config` profiles and instance credentials work too): `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (an S3-compatible server such as MinIO or moto; path-style
addressing is then used, which every such server supports; `NX_S3_URL_STYLE=vhost` overrides). s3fs
serves files (exports, checkpoints, corpora, root_id); DuckDB reaches the Parquet data through its httpfs
extension with a secret built from the same settings.

Errors: `NxInputError` naming the bucket and the setting to fix, for missing credentials, refused
credentials, a missing bucket and an unreachable endpoint (`check_bucket`, before any work).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from nx_dagster import settings as nx_settings
from nx_dagster.errors import NxInputError

CRED_FIX = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key with access to that bucket"


@dataclass(frozen=True)
class S3Settings:
    key_id: str | None
    secret: str | None
    token: str | None
    region: str
    endpoint: str | None  # full URL, e.g. http://127.0.0.1:9000, or None for AWS itself
    url_style: str  # "path" or "vhost"


_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_profile", "aws_region",
           "aws_default_region", "aws_endpoint_url", "aws_endpoint_url_s3", "nx_s3_url_style", "aws_config_file",
           "aws_shared_credentials_file")


def settings() -> S3Settings:
    """The S3 settings in effect now (the Settings' AWS fields first, then the profile), resolved by
    botocore once per combination of them (every catalog connection asks for them)."""
    s = nx_settings.current()
    return _settings(tuple((f, getattr(s, f)) for f in _FIELDS))


@lru_cache(maxsize=16)
def _settings(fields: tuple) -> S3Settings:
    import botocore.session

    s = dict(fields)
    plain = lambda v: v.get_secret_value() if v is not None else None  # noqa: E731
    session = botocore.session.Session(profile=s["aws_profile"])
    for var, path in (("config_file", s["aws_config_file"]), ("credentials_file", s["aws_shared_credentials_file"])):
        if path:
            session.set_config_variable(var, path)
    scoped = _scoped_config(session, s["aws_profile"])  # first: every later lookup fails on an unknown profile
    if s["aws_access_key_id"] is not None and s["aws_secret_access_key"] is not None:
        key_id, secret, token = (plain(s[f]) for f in ("aws_access_key_id", "aws_secret_access_key",
                                                       "aws_session_token"))
    else:
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
        key_id, secret, token = (frozen.access_key, frozen.secret_key, frozen.token) if frozen else (None, None, None)
    region = s["aws_region"] or s["aws_default_region"] or scoped.get("region") or "us-east-1"
    endpoint = s["aws_endpoint_url_s3"] or s["aws_endpoint_url"] or scoped.get("endpoint_url") or None
    style = s["nx_s3_url_style"] or ("path" if endpoint else "vhost")
    return S3Settings(key_id, secret, token, region, endpoint, style)


def _scoped_config(session, profile: str | None) -> dict:
    """The settings of the profile in effect (AWS_PROFILE, else default); NxInputError for an unknown one."""
    import botocore.exceptions

    try:
        return session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound:
        raise NxInputError(f"AWS_PROFILE {profile!r}", "is not a profile in ~/.aws/config or ~/.aws/credentials",
                           "name an existing profile, or unset AWS_PROFILE") from None


def filesystem():
    """An s3fs filesystem for the current settings (listings never cached: other processes write too)."""
    return _filesystem(settings())


@lru_cache(maxsize=8)
def _filesystem(s: S3Settings):
    import s3fs

    return s3fs.S3FileSystem(
        key=s.key_id, secret=s.secret, token=s.token, endpoint_url=s.endpoint, use_listings_cache=False,
        client_kwargs={"region_name": s.region},
        config_kwargs={"s3": {"addressing_style": "path" if s.url_style == "path" else "virtual"}},
    )


def _client(s: S3Settings):
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3", region_name=s.region, endpoint_url=s.endpoint, aws_access_key_id=s.key_id,
        aws_secret_access_key=s.secret, aws_session_token=s.token,
        config=botocore.config.Config(
            s3={"addressing_style": "path" if s.url_style == "path" else "virtual"},
            retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=20))


def check_bucket(url: str, write: bool) -> None:
    """Fail with a clear message, before any work, unless the bucket of `url` exists and the
    credentials may read it (and, if `write`, put and delete an object under its prefix)."""
    import botocore.exceptions

    s = settings()
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    where = f"{url!r}" + (f" at AWS_ENDPOINT_URL={s.endpoint}" if s.endpoint else "")
    if not s.key_id:
        raise NxInputError(f"NX_HOME {where}", "no AWS credentials were found", CRED_FIX)
    client = _client(s)
    try:
        client.head_bucket(Bucket=bucket)
        if write:
            probe = f"{prefix.strip('/')}/.write-probe-{os.getpid()}".lstrip("/")
            client.put_object(Bucket=bucket, Key=probe, Body=b"ok")
            client.delete_object(Bucket=bucket, Key=probe)
    except botocore.exceptions.EndpointConnectionError as e:
        raise NxInputError(f"NX_HOME {where}", f"the S3 endpoint cannot be reached ({e})",
                           "start the server or fix AWS_ENDPOINT_URL (unset it for AWS itself)") from None
    except botocore.exceptions.NoCredentialsError:
        raise NxInputError(f"NX_HOME {where}", "no AWS credentials were found", CRED_FIX) from None
    except botocore.exceptions.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise NxInputError(f"bucket {bucket!r} of NX_HOME {where}", "does not exist",
                               f"create it (e.g. `aws s3 mb s3://{bucket}`) or fix the bucket in NX_HOME") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken") or status == 403:
            raise NxInputError(f"bucket {bucket!r} of NX_HOME {where}",
                               f"refused the AWS credentials ({code or status}: wrong key, or no "
                               f"{'write ' if write else ''}access)", CRED_FIX) from None
        raise NxInputError(f"bucket {bucket!r} of NX_HOME {where}", f"answered {code or status}: {e}",
                           "check the AWS settings (docs/storage.md: Object storage)") from None


def duckdb_secret(bucket: str) -> str:
    """`CREATE OR REPLACE SECRET` for DuckDB's httpfs, scoped to `s3://bucket`, from the current settings."""
    s = settings()
    q = lambda v: "'" + str(v).replace("'", "''") + "'"  # noqa: E731
    fields = {"TYPE": "s3", "KEY_ID": q(s.key_id or ""), "SECRET": q(s.secret or ""), "REGION": q(s.region),
              "URL_STYLE": q(s.url_style), "SCOPE": q(f"s3://{bucket}")}
    if s.token:
        fields["SESSION_TOKEN"] = q(s.token)
    if s.endpoint:
        parts = urlsplit(s.endpoint)
        fields["ENDPOINT"] = q(parts.netloc + parts.path.rstrip("/"))
        fields["USE_SSL"] = "true" if parts.scheme == "https" else "false"
    name = "nx_s3_" + "".join(c if c.isalnum() else "_" for c in bucket)
    return f"CREATE OR REPLACE SECRET {name} ({', '.join(f'{k} {v}' for k, v in fields.items())})"
