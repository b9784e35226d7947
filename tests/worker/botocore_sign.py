#!/usr/bin/env python3
"""Reference SigV4 signatures from botocore, for test_sigv4 / test_storage.

  botocore_sign.py header  METHOD URL AMZ_DATE REGION ACCESS SECRET BODY_HEX [Name:Value ...]
      prints the Authorization header botocore's S3SigV4Auth puts on that request
  botocore_sign.py presign URL AMZ_DATE REGION ACCESS SECRET EXPIRES [TOKEN]
      prints botocore's X-Amz-Signature, then the other query parameters sorted by name

The clock is pinned to AMZ_DATE (botocore reads it through botocore.auth's datetime module in
older releases and get_current_datetime() in newer ones; both are replaced). Exit status 77
means botocore is not importable.
"""
import datetime
import sys
import types
from urllib.parse import parse_qsl, quote, urlsplit

try:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError as e:
    print(f"botocore not available: {e}", file=sys.stderr)
    sys.exit(77)


def pin_clock(amz_date):
    fixed = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")

    class FixedDatetime(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return fixed

        @classmethod
        def now(cls, tz=None):
            return fixed if tz is None else fixed.replace(tzinfo=tz)

    botocore.auth.datetime = types.SimpleNamespace(datetime=FixedDatetime)
    if hasattr(botocore.auth, "get_current_datetime"):
        botocore.auth.get_current_datetime = lambda *a, **k: fixed


def header(method, url, amz_date, region, access, secret, body_hex, *headers):
    pin_clock(amz_date)
    hdrs, token = {}, None
    for h in headers:
        name, _, value = h.partition(":")
        if name.lower() == "x-amz-security-token":
            token = value  # botocore adds (and signs) it from the credentials
        else:
            hdrs[name] = value
    req = AWSRequest(method=method, url=url, data=bytes.fromhex(body_hex), headers=hdrs)
    botocore.auth.S3SigV4Auth(Credentials(access, secret, token), "s3", region).add_auth(req)
    print(req.headers["Authorization"])


def presign(url, amz_date, region, access, secret, expires, token=None):
    pin_clock(amz_date)
    req = AWSRequest(method="GET", url=url)
    creds = Credentials(access, secret, token)
    botocore.auth.S3SigV4QueryAuth(creds, "s3", region, expires=int(expires)).add_auth(req)
    params = dict(parse_qsl(urlsplit(req.url).query, keep_blank_values=True))
    print(params.pop("X-Amz-Signature"))
    print("&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("header", "presign"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    (header if sys.argv[1] == "header" else presign)(*sys.argv[2:])
