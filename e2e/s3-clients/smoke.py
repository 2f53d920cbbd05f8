#!/usr/bin/env python3
"""Smoke test with clients many people use: boto3 and the AWS CLI, against a real server.

Starts `ringstore server` on fresh drive folders, then walks through buckets, objects,
ranges, metadata, copies, listings, multipart uploads (boto3's managed transfer and
`aws s3 cp`), presigned URLs and error codes. Exits non-zero on the first failure.
"""
import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ACCESS = "smoke-access-key"
SECRET = "smoke-secret-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"ringstore exited during start-up with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    sys.exit("ringstore did not become ready")


def expect_error(code, status, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), f"expected {code}/{status}, got {got}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def check(name, cond):
    if not cond:
        raise AssertionError(name)
    print(f"  ok  {name}")


def boto3_scenario(url, workdir):
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    s3.create_bucket(Bucket="smoke")
    check("boto3 list_buckets", [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["smoke"])
    body = os.urandom(3 * 1024 * 1024 + 11)
    put = s3.put_object(Bucket="smoke", Key="dir/a.bin", Body=body, ContentType="application/x-test",
                        Metadata={"color": "blue"})
    check("boto3 put etag is md5", put["ETag"].strip('"') == hashlib.md5(body).hexdigest())
    got = s3.get_object(Bucket="smoke", Key="dir/a.bin")
    check("boto3 get bytes", got["Body"].read() == body)
    check("boto3 metadata", got["Metadata"] == {"color": "blue"} and got["ContentType"] == "application/x-test")
    part = s3.get_object(Bucket="smoke", Key="dir/a.bin", Range="bytes=1048570-1048585")["Body"].read()
    check("boto3 range", part == body[1048570:1048586])
    s3.copy_object(Bucket="smoke", Key="dir/b.bin", CopySource={"Bucket": "smoke", "Key": "dir/a.bin"})
    check("boto3 copy", s3.get_object(Bucket="smoke", Key="dir/b.bin")["Body"].read() == body)
    for i in range(5):
        s3.put_object(Bucket="smoke", Key=f"flat{i}", Body=b"x" * i)
    page = s3.list_objects_v2(Bucket="smoke", Delimiter="/", MaxKeys=3)
    check("boto3 list v2 truncates", page["IsTruncated"] and page["KeyCount"] == 3)
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket="smoke", Delimiter="/", MaxKeys=2, **kw)
        keys += [c["Key"] for c in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    check("boto3 paginated listing", sorted(keys) == ["dir/", "flat0", "flat1", "flat2", "flat3", "flat4"])
    # managed multipart upload through boto3's transfer manager
    big = os.path.join(workdir, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(17 * 1024 * 1024 + 3))
    from boto3.s3.transfer import TransferConfig
    s3.upload_file(big, "smoke", "big.bin", Config=TransferConfig(multipart_threshold=5 * 1024 * 1024,
                                                                  multipart_chunksize=5 * 1024 * 1024))
    head = s3.head_object(Bucket="smoke", Key="big.bin")
    check("boto3 multipart etag has part count", head["ETag"].strip('"').endswith("-4"))
    out = os.path.join(workdir, "big.out")
    s3.download_file("smoke", "big.bin", out)
    check("boto3 multipart round trip", open(out, "rb").read() == open(big, "rb").read())
    url_get = s3.generate_presigned_url("get_object", Params={"Bucket": "smoke", "Key": "flat3"}, ExpiresIn=60)
    with urllib.request.urlopen(url_get) as r:
        check("presigned GET", r.read() == b"xxx")
    expect_error("NoSuchKey", 404, s3.get_object, Bucket="smoke", Key="missing")
    expect_error("NoSuchBucket", 404, s3.list_objects_v2, Bucket="missing")
    expect_error("BucketNotEmpty", 409, s3.delete_bucket, Bucket="smoke")
    expect_error("InvalidRange", 416, s3.get_object, Bucket="smoke", Key="flat1", Range="bytes=10-20")
    bad = boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS, aws_secret_access_key="wrong-secret",
                       region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    expect_error("SignatureDoesNotMatch", 403, bad.list_buckets)
    deleted = s3.delete_objects(Bucket="smoke", Delete={"Objects": [{"Key": f"flat{i}"} for i in range(5)]})
    check("boto3 delete_objects", len(deleted["Deleted"]) == 5)


def cli_scenario(url, workdir):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=os.path.join(workdir, "none"), AWS_SHARED_CREDENTIALS_FILE=os.path.join(workdir, "none"))

    def aws(*args, capture=True):
        r = subprocess.run(["aws", "--endpoint-url", url, *args], env=env, capture_output=capture, text=True)
        if r.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    aws("s3", "mb", "s3://cli")
    src = os.path.join(workdir, "cli.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(20 * 1024 * 1024 + 5))
    aws("s3", "cp", src, "s3://cli/nested/cli.bin")  # multipart by default above 8 MiB
    dst = os.path.join(workdir, "cli.out")
    aws("s3", "cp", "s3://cli/nested/cli.bin", dst)
    check("aws s3 cp round trip", open(dst, "rb").read() == open(src, "rb").read())
    listing = aws("s3", "ls", "s3://cli/nested/")
    check("aws s3 ls", "cli.bin" in listing)
    head = json.loads(aws("s3api", "head-object", "--bucket", "cli", "--key", "nested/cli.bin"))
    check("aws s3api head-object", head["ContentLength"] == 20 * 1024 * 1024 + 5)
    aws("s3", "rm", "s3://cli/nested/cli.bin")
    aws("s3", "rb", "s3://cli")
    check("aws s3 rb", "cli" not in aws("s3", "ls"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/debug/ringstore")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        drives = [a for i in range(4) for a in ("--data", os.path.join(work, f"d{i}"))]
        env = dict(os.environ, RINGSTORE_ACCESS_KEY=ACCESS, RINGSTORE_SECRET_KEY=SECRET, RUST_LOG="warn,s3s=off")
        proc = subprocess.Popen([args.binary, "server", "--address", f"127.0.0.1:{port}", *drives], env=env)
        try:
            wait_ready(url, proc)
            print("boto3", boto3.__version__)
            boto3_scenario(url, work)
            print("aws cli")
            cli_scenario(url, work)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("smoke test passed")


if __name__ == "__main__":
    main()
