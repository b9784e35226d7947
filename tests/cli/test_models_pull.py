"""`paella models pull` against a local server with the Hugging Face URL layout
({endpoint}/{repo}/resolve/{revision}/{file}, LFS files redirected to a CDN path, their
SHA-256 in X-Linked-Etag and size in X-Linked-Size). Covers HF_ENDPOINT and HF_TOKEN, a
transfer cut mid-file (resumed with a Range request), a partial file left by an earlier run
(resumed), a file whose bytes do not match the SHA-256 the Hub reports (refused and
removed), a non-LFS file (size check only), and a rerun that downloads nothing.
Usage: /usr/bin/python3 test_models_pull.py PATH/TO/paella"""

import hashlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading

PAELLA = sys.argv[1]
TOKEN = "hf_test_token"
FILES = {  # repo/file -> where paella puts it
    "dome272/Paella/paella_v3.pt": "paella_v3.pt",
    "dome272/Paella/prior_v1.pt": "prior_v1.pt",
    "dome272/Paella/vqgan_f4.pt": "vqgan_f4.pt",
    "google/byt5-xl/pytorch_model.bin": "byt5-xl/pytorch_model.bin",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/model.safetensors": "CLIP-ViT-H-14-laion2B-s32B-b79K/model.safetensors",
}
CONTENT = {k: os.urandom(300_000 + 1000 * i) for i, k in enumerate(FILES)}
NOT_LFS = "dome272/Paella/vqgan_f4.pt"  # a plain git file: a git-sha1 ETag, no SHA-256
GATED = "google/byt5-xl/pytorch_model.bin"  # needs the token


class State:
    corrupt = {"dome272/Paella/prior_v1.pt"}  # served bytes differ from the SHA-256 announced
    cut_once = {"dome272/Paella/paella_v3.pt"}  # first GET stops halfway
    log = []  # (method, path, range, authorization)


class Hub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _key(self):
        parts = self.path.split("/")  # /{org}/{name}/resolve/main/{file}
        if len(parts) == 6 and parts[3] == "resolve" and parts[4] == "main":
            return "/".join([parts[1], parts[2], parts[5]])
        return None

    def _meta(self, key):
        body = CONTENT[key]
        if key == NOT_LFS:
            return {"ETag": '"%s"' % hashlib.sha1(body).hexdigest(), "Content-Length": str(len(body))}
        return {"X-Linked-Etag": '"%s"' % hashlib.sha256(body).hexdigest(), "X-Linked-Size": str(len(body)),
                "ETag": '"%s"' % hashlib.sha1(key.encode()).hexdigest(),
                "Location": "/cdn/" + key.replace("/", "--"), "Content-Length": "0"}

    def _answer(self, head_only):
        State.log.append((self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if self.path.startswith("/cdn/"):
            return self._cdn(self.path[5:].replace("--", "/"), head_only)
        key = self._key()
        if key not in CONTENT:
            return self._status(404)
        if key == GATED and self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self._status(401)
        meta = self._meta(key)
        if key == NOT_LFS:
            return self._send(200, meta, b"" if head_only else CONTENT[key])
        self._send(302, meta, b"")

    def _cdn(self, key, head_only):
        body = CONTENT[key]
        if key in State.corrupt:
            body = body[:-1] + bytes([body[-1] ^ 1])
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        if start >= len(body):
            return self._status(416)
        part = body[start:]
        headers = {"Content-Length": str(len(part))}
        if start:
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, len(body) - 1, len(body))
        if head_only:
            return self._send(206 if start else 200, headers, b"")
        if key in State.cut_once:  # announce everything, send half, drop the connection
            State.cut_once.discard(key)
            self.send_response(206 if start else 200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if start else 200, headers, part)

    def _status(self, code):
        self._send(code, {"Content-Length": "0"}, b"")

    def _send(self, code, headers, body):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self._answer(True)

    def do_GET(self):
        self._answer(False)


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def pull(models, endpoint, token=TOKEN, extra=()):
    env = dict(os.environ, HF_ENDPOINT=endpoint)
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    r = subprocess.run([PAELLA, "models", "pull", "--dir", models, *extra], capture_output=True, text=True, env=env,
                       timeout=300)
    return r.returncode, r.stderr


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d/" % server.server_address[1]
    with tempfile.TemporaryDirectory() as tmp:
        models = os.path.join(tmp, "models")
        # a partial ByT5 from an earlier run: the first third of the right bytes
        byt5_part = os.path.join(models, "byt5-xl", "pytorch_model.bin.incomplete")
        os.makedirs(os.path.dirname(byt5_part))
        third = len(CONTENT[GATED]) // 3
        with open(byt5_part, "wb") as f:
            f.write(CONTENT[GATED][:third])

        rc, err = pull(models, endpoint)
        check(rc == 1, f"a corrupted file makes the run fail: rc={rc} {err}")
        check("4 of 5 files" in err and "(4 downloaded)" in err, f"summary: {err}")
        check("prior_v1.pt: SHA-256 mismatch" in err, f"the mismatch is named: {err}")
        check(not os.path.exists(os.path.join(models, "prior_v1.pt")), "the corrupted file is not placed")
        check(not os.path.exists(os.path.join(models, "prior_v1.pt.incomplete")), "the corrupted download is removed")
        for key, local in FILES.items():
            if key in State.corrupt:
                continue
            path = os.path.join(models, local)
            ok = os.path.exists(path) and open(path, "rb").read() == CONTENT[key]
            check(ok, f"{local} is placed with the published bytes")
            check(not os.path.exists(path + ".incomplete"), f"{local}: no partial file left")
        ranges = [(p, r) for m, p, r, a in State.log if m == "GET" and r]
        check(any("paella_v3.pt" in p and r != "bytes=0-" for p, r in ranges), f"the cut transfer resumed: {ranges}")
        check(any("pytorch_model.bin" in p and r == "bytes=%d-" % third for p, r in ranges),
              f"the earlier partial file resumed at byte {third}: {ranges}")
        auth = [a for m, p, r, a in State.log if "/resolve/" in p]
        check(auth and all(a == "Bearer " + TOKEN for a in auth), "HF_TOKEN is sent to the endpoint")

        # the Hub serves the right bytes again: the rerun fetches only the missing file
        State.corrupt.clear()
        State.log.clear()
        rc, err = pull(models, endpoint)
        check(rc == 0, f"rerun: rc={rc} {err}")
        gets = [p for m, p, r, a in State.log if m == "GET"]
        check(gets and all("prior" in g for g in gets), f"only prior fetched: {gets}")
        check(open(os.path.join(models, "prior_v1.pt"), "rb").read() == CONTENT["dome272/Paella/prior_v1.pt"], "prior placed")
        check("1 downloaded" in err and "5 of 5 files" in err, f"summary: {err}")

        # a gated repository without the token
        rc, err = pull(os.path.join(tmp, "other"), endpoint, token=None)
        check(rc == 1 and "HTTP 401" in err and "HF_TOKEN" in err, f"401 without a token: {err}")

        rc, _ = pull(models, endpoint, extra=("--bogus",))
        check(rc == 2, "an unknown option is a usage error")
    server.shutdown()
    print(f"models pull: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
