"""paella_client against a real scheduler, redis-server and paella-worker (started by
tests/api/test_python_client.c, which sets PAELLA_URL, PAELLA_TEST_WEBHOOK_SECRET and
PAELLA_SOURCE_DIR). Every response is also checked against docs/openapi.json, the
description the scheduler serves at /openapi.json. Run with /usr/bin/python3."""

import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import paella_client  # noqa: E402
from paella_client import Client, PaellaError, WebhookVerificationError, verify_webhook  # noqa: E402

import jsonschema  # noqa: E402  (python3-jsonschema, Debian)

SOURCE = os.environ["PAELLA_SOURCE_DIR"]
FAST = {"width": 32, "height": 32, "steps": 2, "prior": {"steps": 1}}
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


class Spec:
    """Validates values against the components of the served OpenAPI description."""

    def __init__(self, doc):
        self.doc = doc

    def valid(self, name, value):
        schema = dict(self.doc)
        schema["$ref"] = "#/components/schemas/" + name
        try:
            jsonschema.Draft202012Validator(schema).validate(value)
            return True
        except jsonschema.ValidationError as e:
            print(f"  {name} does not match: {e.message} at {list(e.absolute_path)}", file=sys.stderr)
            return False


def test_openapi(c):
    served = c.openapi()
    with open(os.path.join(SOURCE, "docs", "openapi.json")) as f:
        kept = json.load(f)
    check(served == kept, "/openapi.json is docs/openapi.json")
    check(served.get("openapi") == "3.1.0", "OpenAPI 3.1")
    return Spec(served)


def test_submit_wait_fetch(c, spec, tmp):
    job = c.submit("a fox", seed=3, output_format="jpeg", output_quality=85, wait=120, **FAST)
    check(job["status"] == "succeeded", f"submit with wait: {job['status']}")
    check(spec.valid("Job", job), "submitted job matches Job")
    again = c.get(job["id"])
    check(spec.valid("Job", again) and again["result"]["seed"] == 3, "get")
    paths = c.fetch(job["id"], os.path.join(tmp, "out"))
    check(len(paths) == 1 and paths[0].endswith("/0.jpg"), f"fetch paths {paths}")
    data = open(paths[0], "rb").read()
    check(data[:3] == b"\xff\xd8\xff", "fetched output is JPEG")
    check(b'"seed":3' in data and b'"prompt":"a fox"' in data, "parameters embedded in the JPEG")
    check(c.output(job["id"], 0) == data, "output bytes")
    page = c.list(limit=2)
    check(len(page["data"]) <= 2 and all(spec.valid("Job", j) for j in page["data"]), "list page")
    # idempotency: the same key and body give the same job
    a = c.submit("a boat", idempotency_key="py-1", **FAST)
    b = c.submit("a boat", idempotency_key="py-1", **FAST)
    check(a["id"] == b["id"], "idempotency key")
    done = c.wait(a["id"], timeout=120)
    check(done["status"] == "succeeded" and spec.valid("Job", done), "wait")


def test_events_and_cancel(c, spec):
    """A long job A holds the worker while B waits in the queue, so B's stream opens before B
    starts and every one of its steps must arrive; A is then canceled."""
    a = c.submit("a long fox", **dict(FAST, steps=100, prior={"steps": 200}, width=128, height=128))
    b = c.submit("a slow fox", **dict(FAST, steps=20, prior={"steps": 20}, width=64, height=64))
    seen, canceled = [], False
    for event, data in c.events(b["id"], timeout=300):
        seen.append((event, data))
        schema = "Job" if event == "status" else "Progress"
        check(spec.valid(schema, data), f"SSE {event} matches {schema}")
        if not canceled:
            canceled = True
            try:
                check(spec.valid("Job", c.cancel(a["id"])), "cancel reply matches Job")
                final = c.wait(a["id"], timeout=120)
                check(final["status"] == "canceled", f"canceled: {final['status']}")
            except PaellaError as e:  # A finished first
                check(e.status == 409 and e.code == "conflict", f"cancel of a finished job: {e}")
    statuses = [d["status"] for e, d in seen if e == "status"]
    check(statuses and statuses[-1] == "succeeded", f"the stream ends with the final status: {statuses}")
    if statuses and statuses[0] == "queued":
        steps = [d for e, d in seen if e == "progress" and d["stage"] == "denoise"]
        check(len(steps) >= 1 and steps[-1]["step"] == steps[-1]["total"] == 20, f"denoise progress: {steps[-3:]}")
        print(f"  SSE: {len(seen)} events, {len(steps)} denoise steps")
    else:
        print(f"  (B was {statuses[0] if statuses else '?'} when its stream opened: progress not asserted)")


def test_errors(c, spec):
    try:
        c.get("j-nope")
        check(False, "unknown job raises")
    except PaellaError as e:
        check(e.status == 404 and e.code == "not_found" and "no job j-nope" in e.message, f"404: {e}")
        check(str(e) == "HTTP 404 not_found: no job j-nope", f"message: {e}")
    try:
        c.submit("x", width=33)
        check(False, "width 33 raises")
    except PaellaError as e:
        check(e.status == 422 and e.code == "out_of_range" and e.field == "width", f"422: {e}")
        check(spec.valid("Error", {"error": {"code": e.code, "message": e.message, "field": e.field}}), "Error schema")
    try:
        c.submit("x", output_format="gif")
        check(False, "output_format gif raises")
    except PaellaError as e:
        check(e.status == 422 and e.field == "output_format", f"output_format: {e}")


def test_batch(c, spec):
    b = c.submit_batch(["fox 1", {"prompt": "fox 2", "seed": 9}], settings=dict(FAST, output_format="webp"),
                       name="py-batch", shard_size=10)
    check(spec.valid("Batch", b) and b["total"] == 2, f"batch submit {b}")
    done = c.wait_batch(b["id"], timeout=180)
    check(done["status"] == "completed" and done["succeeded"] == 2 and spec.valid("Batch", done), f"batch {done}")
    # the shard holds the images in the batch's output format
    # named relative to the file:// store, never by a server path
    check(not done["manifest"].startswith(("file:", "/")), f"manifest {done['manifest']}")
    manifest_path = os.path.join(os.environ["PAELLA_TEST_STORE_DIR"], done["manifest"])
    with open(manifest_path) as f:
        manifest = json.load(f)
    shard = os.path.join(os.path.dirname(manifest_path), manifest["shards"][0]["name"])
    with tarfile.open(shard) as t:
        names = sorted(t.getnames())
        first = t.extractfile("000000.webp").read() if "000000.webp" in names else b""
    check(names == ["000000.json", "000000.webp", "000001.json", "000001.webp"], f"shard members {names}")
    check(first[:4] == b"RIFF" and b"paella:parameters" in first, "shard images are WebP with parameters")


class Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks(c):
    secret = os.environ["PAELLA_TEST_WEBHOOK_SECRET"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    job = c.submit("a hooked fox", webhook={"url": url, "events": ["completed"]}, wait=120, **FAST)
    check(job["status"] == "succeeded", "webhook job")
    deadline = time.monotonic() + 60
    while not Receiver.received and time.monotonic() < deadline:
        time.sleep(0.1)
    server.shutdown()
    check(len(Receiver.received) >= 1, "a webhook arrived")
    if not Receiver.received:
        return
    headers, body = Receiver.received[0]
    payload = verify_webhook(secret, headers, body)
    check(payload["type"] == "completed" and payload["job_id"] == job["id"], f"payload {payload}")
    check(payload["data"]["status"] == "succeeded", "completed carries the Result")
    for bad in (body + b" ", body.replace(b"succeeded", b"failed_xx")):
        try:
            verify_webhook(secret, headers, bad)
            check(False, "a tampered body verifies")
        except WebhookVerificationError:
            check(True, "")
    try:
        verify_webhook(secret, headers, body, now=int(headers.get("webhook-timestamp", headers.get("Webhook-Timestamp"))) + 3600)
        check(False, "an old timestamp verifies")
    except WebhookVerificationError:
        check(True, "")


def test_signature_vector():
    # the example of the Standard Webhooks specification
    h = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
         "webhook-signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    out = verify_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", h, b'{"test": 2432232314}', now=1614265330)
    check(out == {"test": 2432232314}, "Standard Webhooks example verifies")
    try:
        verify_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", dict(h, **{"webhook-signature": "v1,bm9wZQ=="}),
                       b'{"test": 2432232314}', now=1614265330)
        check(False, "a wrong signature verifies")
    except WebhookVerificationError:
        check(True, "")


def test_pip_install(tmp):
    """pip installs the folder (a copy: setuptools writes build/ and *.egg-info beside the
    sources) and the installed module imports."""
    src, target = os.path.join(tmp, "src"), os.path.join(tmp, "site")
    shutil.copytree(os.path.dirname(HERE), src, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                        "--no-index", "--target", target, src], capture_output=True, text=True)
    check(r.returncode == 0, f"pip install: {r.stderr[-500:]}")
    r = subprocess.run([sys.executable, "-c", "import paella_client, sys; print(paella_client.__file__)"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=target), cwd=tmp)
    check(r.returncode == 0 and r.stdout.startswith(target), f"the installed module imports: {r.stdout} {r.stderr}")


def main():
    c = Client()
    with tempfile.TemporaryDirectory() as tmp:
        spec = test_openapi(c)
        test_signature_vector()
        test_errors(c, spec)
        test_submit_wait_fetch(c, spec, tmp)
        test_events_and_cancel(c, spec)
        test_batch(c, spec)
        test_webhooks(c)
        test_pip_install(tmp)
    print(f"python client: {checks - len(failures)} passed, {len(failures)} failed (paella_client {paella_client.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
