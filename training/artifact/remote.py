"""Artifacts in S3-compatible object storage: `s3://bucket/prefix` holds the files of one artifact
directory (`prefix/manifest.json`, `prefix/adapter_model.safetensors`, ...).

    path = fetch_artifact("s3://models/support-bot/v3", cache_root)   # a verified local copy
    art = load_artifact(path, expect_base_sha256=...)                   # verified again when loaded

Only the files the manifest lists are downloaded, into a temp dir that is verified against the
manifest's sha256s and then renamed into the cache in one step, so the cache never holds a partial
or tampered copy. The cache key is the URI plus the manifest's own sha256: a re-uploaded version
gets its own directory, an unchanged one is not downloaded again.

Credentials and endpoint come from boto3's standard sources: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (a Kubernetes Secret mounted as env vars), AWS_ENDPOINT_URL_S3 (MinIO, Ceph,
...), AWS_REGION, or an instance/pod role. boto3 is imported on first use.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from training.artifact.errors import ArtifactInvalid, InvalidRequest, NotFound, Unavailable
from training.artifact.manifest import MANIFEST_NAME
from training.artifact.store import read_manifest, verify_files

SCHEME = "s3://"


def is_remote(source: str | Path) -> bool:
    return str(source).startswith(SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    bucket, _, prefix = uri[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not is_remote(uri) or not bucket or not prefix or ".." in prefix.split("/"):
        raise InvalidRequest(f"{uri!r} is not an artifact URI", "use s3://<bucket>/<prefix of the artifact's files>")
    return bucket, prefix


def fetch_artifact(uri: str, cache_root: Path, client=None) -> Path:
    """A local, checksum-verified copy of the artifact at `uri` (downloaded once per manifest)."""
    bucket, prefix = split_uri(uri)
    client = client or s3_client()
    manifest_bytes = _get(client, bucket, f"{prefix}/{MANIFEST_NAME}", uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + hashlib.sha256(manifest_bytes).hexdigest()[:16]
    dest = Path(cache_root) / key
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{key}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        (tmp / MANIFEST_NAME).write_bytes(manifest_bytes)
        manifest = read_manifest(tmp)
        for rel in sorted(manifest.files):
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ArtifactInvalid(f"artifact {uri}: manifest path {rel!r} escapes the artifact directory",
                                      "the manifest was tampered with; upload the artifact again")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_get(client, bucket, f"{prefix}/{rel}", uri))
        try:
            verify_files(tmp, manifest)
        except ArtifactInvalid as exc:
            raise ArtifactInvalid(exc.message.replace(str(tmp), uri), exc.hint) from None
        try:
            os.rename(tmp, dest)
        except OSError:  # another replica on this node got there first: its copy is verified too
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def s3_client():
    try:
        import boto3
    except ImportError:
        raise Unavailable("loading artifacts from s3:// needs boto3", "pip install boto3") from None
    return boto3.client("s3")


def _get(client, bucket: str, key: str, uri: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise NotFound(f"artifact {uri}: s3://{bucket}/{key} does not exist",
                           "check the URI: it names the prefix that holds manifest.json") from None
        raise Unavailable(f"artifact {uri}: object storage refused s3://{bucket}/{key} ({code or exc})",
                          "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy") from None
    except BotoCoreError as exc:
        raise Unavailable(f"artifact {uri}: object storage unreachable ({exc})",
                          "check AWS_ENDPOINT_URL_S3 and the network, then retry") from None
