"""A client for the paella scheduler's HTTP API (docs/api.md, docs/openapi.json).

Standard library only. Submit jobs, wait for them, follow their progress (Server-Sent
Events), cancel them, run batches, download outputs, and verify the Standard Webhooks
signature of the events a worker POSTs::

    from paella_client import Client
    c = Client("http://127.0.0.1:8080", api_key="...")
    job = c.submit("a red fox", width=256, height=256, seed=7)
    for event, data in c.events(job["id"]):
        print(event, data.get("stage"), data.get("step"))
    paths = c.fetch(job["id"], "out/")

Every API error raises PaellaError with the HTTP status and the error object's code,
message and field.
"""

import base64
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "PaellaError", "WebhookVerificationError", "verify_webhook"]
__version__ = "0.3.0"

FINAL_STATUSES = ("succeeded", "failed", "canceled")


class PaellaError(Exception):
    """An API error: `status` (HTTP), `code`, `message`, `field` ("" when none)."""

    def __init__(self, status, code, message, field=""):
        self.status, self.code, self.message, self.field = status, code, message, field
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}")


class WebhookVerificationError(Exception):
    """A webhook whose signature, timestamp or body cannot be trusted."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Client:
    """The scheduler at `url` (default $PAELLA_URL, else http://127.0.0.1:8080) with an API
    key (default $PAELLA_API_KEY; None when authentication is off)."""

    def __init__(self, url=None, api_key=None, timeout=60.0):
        self.url = (url or os.environ.get("PAELLA_URL") or "http://127.0.0.1:8080").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("PAELLA_API_KEY")
        self.timeout = timeout

    # ---- transport ------------------------------------------------------------------
    def _request(self, method, path, body=None, content_type=None, headers=None, timeout=None, raw=False):
        h = dict(headers or {})
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        if content_type:
            h["Content-Type"] = content_type
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                payload = r.read()
                return payload if raw else json.loads(payload or b"null")
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None

    def _json(self, method, path, obj=None, headers=None, timeout=None):
        body = None if obj is None else json.dumps(obj)
        return self._request(method, path, body, "application/json" if body is not None else None, headers, timeout)

    # ---- jobs -----------------------------------------------------------------------
    def submit(self, prompt=None, *, job=None, idempotency_key=None, wait=None, **fields):
        """Submits a job: `job` (a dict of Job fields, docs/protocol.md) and/or keyword
        fields (width=..., steps=..., prior={...}). `wait` holds the request up to that many
        seconds for the finished job. Returns the job resource."""
        body = dict(job or {})
        body.update(fields)
        if prompt is not None:
            body["prompt"] = prompt
        headers = {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if wait:
            headers["Prefer"] = f"wait={int(wait)}"
        return self._json("POST", "/v1/jobs", body, headers, timeout=self.timeout + (wait or 0))

    def get(self, job_id):
        return self._json("GET", "/v1/jobs/" + _q(job_id))

    def list(self, status=None, limit=None, cursor=None):
        """One page of jobs, newest first: {"data": [...], "next_cursor": ...}."""
        query = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        return self._json("GET", "/v1/jobs" + ("?" + urllib.parse.urlencode(query) if query else ""))

    def cancel(self, job_id):
        return self._json("POST", "/v1/jobs/" + _q(job_id) + "/cancel")

    def wait(self, job_id, timeout=600.0, poll=0.5):
        """Polls until the job is succeeded, failed or canceled; returns it. TimeoutError
        when it is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.get("status") in FINAL_STATUSES:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.get('status')} after {timeout} s")
            time.sleep(poll)

    def events(self, job_id, timeout=None):
        """Server-Sent Events of a job as (event, data) pairs: "status" (the job resource),
        "start" and "progress" (Progress messages); pings are skipped. Ends after the final
        status."""
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        req = urllib.request.Request(self.url + "/v1/jobs/" + _q(job_id) + "/events", headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout or max(self.timeout, 30.0))
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None
        with resp:
            yield from _sse(resp)

    def output(self, job_id, n=0):
        """The bytes of output n of a finished job (served, or from its presigned URL)."""
        path = f"/v1/jobs/{_q(job_id)}/outputs/{int(n)}"
        headers = {"Authorization": "Bearer " + self.api_key} if self.api_key else {}
        req = urllib.request.Request(self.url + path, headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                with urllib.request.urlopen(e.headers["Location"], timeout=self.timeout) as r:  # no API key to S3
                    return r.read()
            raise _api_error(e) from None

    def fetch(self, job_id, directory, wait=None):
        """Downloads every output of a succeeded job into `directory` (named after their
        keys: 0.png for one image, 00.png, 01.png ... for several); returns the paths. `wait`: seconds to wait for it first."""
        job = self.wait(job_id, wait) if wait else self.get(job_id)
        if job.get("status") != "succeeded":
            raise PaellaError(409, "conflict", f"job {job_id} is {job.get('status')}; it has no outputs")
        os.makedirs(directory, exist_ok=True)
        paths = []
        for i, out in enumerate(job.get("result", {}).get("outputs", [])):
            name = os.path.basename(out["key"])
            if name in ("", ".", ".."):
                raise PaellaError(500, "internal", f"output {i} has no usable name")
            path = os.path.join(directory, name)
            tmp = path + ".part"
            with open(tmp, "wb") as f:
                f.write(self.output(job_id, i))
            os.replace(tmp, path)
            paths.append(path)
        return paths

    # ---- batches --------------------------------------------------------------------
    def submit_batch(self, items, settings=None, name=None, shard_size=None):
        """A batch: `items` are prompts (str) or dicts of Job fields overriding `settings`."""
        head = {k: v for k, v in (("settings", settings), ("name", name), ("shard_size", shard_size)) if v is not None}
        lines = [json.dumps(head)] + [json.dumps(i) for i in items]
        return self._request("POST", "/v1/batches", "\n".join(lines) + "\n", "application/x-ndjson")

    def batch(self, batch_id):
        return self._json("GET", "/v1/batches/" + _q(batch_id))

    def wait_batch(self, batch_id, timeout=3600.0, poll=0.5):
        deadline = time.monotonic() + timeout
        while True:
            b = self.batch(batch_id)
            if b.get("status") == "completed":
                return b
            if time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} is still {b.get('status')} after {timeout} s")
            time.sleep(poll)

    # ---- dead letters (admin keys) and the description -------------------------------
    def deadletters(self, limit=None, cursor=None):
        query = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        return self._json("GET", "/v1/deadletters" + ("?" + urllib.parse.urlencode(query) if query else ""))

    def requeue(self, deadletter_id):
        return self._json("POST", "/v1/deadletters/" + _q(deadletter_id) + "/requeue")

    def openapi(self):
        """The scheduler's OpenAPI 3.1 description."""
        return self._json("GET", "/openapi.json")


def verify_webhook(secret, headers, body, tolerance=300, now=None):
    """Checks a Standard Webhooks request and returns its JSON payload.

    `secret` is "whsec_<base64>" (or the base64 alone), `headers` a mapping (any case) with
    webhook-id, webhook-timestamp and webhook-signature, `body` the raw bytes. Raises
    WebhookVerificationError when a header is missing, the timestamp is more than
    `tolerance` seconds away from `now`, or no v1 signature matches."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    except KeyError as e:
        raise WebhookVerificationError(f"missing header {e.args[0]}") from None
    if not stamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    key = secret[6:] if secret.startswith("whsec_") else secret
    try:
        key_bytes = base64.b64decode(key, validate=True)
    except ValueError:
        raise WebhookVerificationError("the secret is not whsec_ + base64") from None
    raw = body.encode() if isinstance(body, str) else bytes(body)
    mac = hmac.new(key_bytes, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for sig in signatures.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(raw)
    raise WebhookVerificationError("no matching v1 signature")


def _q(s):
    return urllib.parse.quote(str(s), safe="")


def _api_error(e):
    try:
        err = json.loads(e.read() or b"{}").get("error", {})
    except ValueError:
        err = {}
    return PaellaError(e.code, err.get("code", "http_error"), err.get("message", e.reason), err.get("field", ""))


def _sse(stream):
    event, data = "message", []
    for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data and event != "ping":
                text = "\n".join(data)
                try:
                    yield event, json.loads(text)
                except ValueError:
                    yield event, text
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
