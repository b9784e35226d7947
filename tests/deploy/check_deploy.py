"""Checks of the deployment files that need no cluster and no Docker engine (docs/deploy.md).

Run by check.sh, which renders the chart first. Subcommands:
  rendered FILE SCENARIO   the chart's output: valid YAML, the expected kinds and contents
  schema                   values files against values.schema.json (and a bad one refused)
  dockerfiles              every stage has FROM, USER non-root, HEALTHCHECK, COPY --from
  redis RENDER             the chart's own Redis container run as rendered (real
                           redis-server), then one job queued the way the scheduler does it:
                           KEDA's reading of the lag and activation with the rendered triggers
  settings HELP_W HELP_S RENDER_W RENDER_S
                           every flag/variable of the binaries' --help reachable from the
                           chart (rendered) and from docker-compose.yml
Exits non-zero with one line per failure.
"""
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "paella"
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def finish(what):
    if failures:
        print(f"{what}: {len(failures)} failure(s)")
        sys.exit(1)
    print(f"{what}: ok")


def load_docs(path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise SystemExit(f"{path}: a document without kind/apiVersion: {str(d)[:200]}")
    return docs


def by_kind(docs, kind, component=None):
    out = [d for d in docs if d["kind"] == kind]
    if component:
        out = [d for d in out
               if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    return out


def one(docs, kind, component=None):
    found = by_kind(docs, kind, component)
    if len(found) != 1:
        fail(f"expected one {kind} {component or ''}, found {len(found)}")
        return {}
    return found[0]


def container(deploy):
    return deploy.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0]


def workloads(docs):
    return by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")


def selected_pods(docs, match_labels):
    """The workloads whose pod template a label selector (matchLabels) picks."""
    return [w for w in workloads(docs)
            if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v
                   for k, v in match_labels.items())]


def secret_refs(workload):
    """{secret name: optional?} of every Secret a workload's first container reads."""
    c = container(workload)
    refs = {}
    for ref in c.get("envFrom", []):
        if "secretRef" in ref:
            refs[ref["secretRef"]["name"]] = ref["secretRef"].get("optional", False)
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[ref["name"]] = refs.get(ref["name"], True) and ref.get("optional", False)
    return refs


# Credentials only one side may read: the workers have no use for the API key hashes (both
# write to the store: the scheduler its batch shards).
FOREIGN_KEYS = {"scheduler": (), "worker": ("PAELLA_API_KEY_HASHES",)}


def check_secrets(docs):
    """Each component reads its own Secret of the chart's, never the other's keys, and a
    Secret a pod cannot start without (not optional) is one the chart renders."""
    rendered = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    readers = {}
    for w in workloads(docs):
        component = w["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        for name, optional in secret_refs(w).items():
            readers.setdefault(name, set()).add(component)
            if not optional and name not in rendered:
                fail(f"{component} pods need Secret {name}, which the chart does not render")
            keys = set(rendered.get(name, {}).get("stringData", {}))
            for key in keys:
                if key.startswith(FOREIGN_KEYS.get(component, ())):
                    fail(f"{component} pods read Secret {name} holding {key}")
    for name, components in readers.items():
        if name in rendered and {"scheduler", "worker"} <= components:
            fail(f"the chart's Secret {name} is read by both the scheduler and the workers")


def check_network_policies(docs):
    """Every NetworkPolicy selects pods of the chart and opens the port they listen on."""
    for np in by_kind(docs, "NetworkPolicy"):
        name = np["metadata"]["name"]
        pods = selected_pods(docs, np["spec"]["podSelector"]["matchLabels"])
        if not pods:
            fail(f"NetworkPolicy {name} selects no pods")
            continue
        ports = {p["containerPort"] for w in pods for p in container(w).get("ports", [])}
        opened = {p["port"] for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if not opened or not opened <= ports:
            fail(f"NetworkPolicy {name} opens {sorted(opened)}, its pods listen on {sorted(ports)}")


def keda_active(trigger, value):
    """KEDA's activation test for a trigger at a given metric value (the lag): the scaler is
    active, and wakes a Deployment scaled to zero, when the value is strictly greater than
    the activation threshold (pkg/scalers/redis_streams_scaler.go and kafka_scaler.go,
    GetMetricsAndActivity; both thresholds default to 0)."""
    key = {"redis-streams": "activationLagCount", "kafka": "activationLagThreshold"}[trigger["type"]]
    return value > int(trigger["metadata"].get(key, "0"))


# ---- rendered chart ------------------------------------------------------------------------
def check_common(docs):
    names = set()
    for d in docs:
        key = (d["kind"], d["metadata"]["name"])
        if key in names:
            fail(f"duplicate {key}")
        names.add(key)
        if len(d["metadata"]["name"]) > 63:
            fail(f"{key}: name longer than 63")
    for dep in workloads(docs):
        spec = dep["spec"]
        tmpl = spec["template"]
        sel = spec["selector"]["matchLabels"]
        if any(tmpl["metadata"]["labels"].get(k) != v for k, v in sel.items()):
            fail(f"{dep['metadata']['name']}: selector does not match the pod labels")
        pod = tmpl["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            fail(f"{dep['metadata']['name']}: pods not runAsNonRoot")
        c = container(dep)
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                fail(f"{dep['metadata']['name']}: no {probe}")
        ports = {p["name"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            spec = c.get(probe, {})
            port = spec.get("httpGet", spec.get("tcpSocket", {})).get("port")
            if port is not None and port not in ports:
                fail(f"{dep['metadata']['name']}: {probe} on unknown port {port}")
        cms = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
        for ref in c.get("envFrom", []):
            cm = ref.get("configMapRef")
            if cm and cm["name"] not in cms:
                fail(f"{dep['metadata']['name']}: envFrom a ConfigMap the chart does not render: {cm['name']}")
    for svc in by_kind(docs, "Service") + by_kind(docs, "PodDisruptionBudget"):
        sel = svc["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        if not selected_pods(docs, sel):
            fail(f"{svc['kind']} {svc['metadata']['name']} selects no Deployment's pods")
    check_secrets(docs)
    check_network_policies(docs)


def check_worker(docs, queue, gpu=True):
    dep = one(docs, "Deployment", "worker")
    if not dep:
        return
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    env = {e["name"]: e for e in c.get("env", [])}
    q = env.get("PAELLA_QUEUE", {}).get("value", "")
    if not q.startswith(queue + "://") and not (queue == "redis" and q.startswith("rediss://")):
        fail(f"worker PAELLA_QUEUE is {q!r}, want {queue}://")
    if env.get("PAELLA_CONSUMER", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("worker consumer name is not the pod's name")
    limits = c.get("resources", {}).get("limits", {})
    grace = pod.get("terminationGracePeriodSeconds", 0)
    if gpu:
        if limits.get("nvidia.com/gpu") != 1:
            fail(f"worker does not request nvidia.com/gpu: {limits}")
        if not any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                   for t in pod.get("tolerations", [])):
            fail("worker has no nvidia.com/gpu toleration")
        if "nvidia.com/gpu.present" not in pod.get("nodeSelector", {}):
            fail("worker has no GPU node selector")
    elif "nvidia.com/gpu" in limits or pod.get("tolerations"):
        fail("CPU worker asks for a GPU")
    if not isinstance(grace, int) or grace <= 600:
        fail(f"worker terminationGracePeriodSeconds {grace} not above the 600 s job timeout")
    if "checksum/config" not in dep["spec"]["template"]["metadata"].get("annotations", {}):
        fail("worker pods do not roll on config changes")


def check_scaledobject(docs, queue, to_zero):
    so = one(docs, "ScaledObject", "worker")
    if not so:
        return
    spec = so["spec"]
    dep = one(docs, "Deployment", "worker")
    if spec["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        fail("ScaledObject targets another Deployment")
    if "replicas" in dep["spec"]:
        fail("worker Deployment sets replicas although KEDA scales it")
    if (spec["minReplicaCount"] == 0) != to_zero:
        fail(f"minReplicaCount {spec['minReplicaCount']} (scale to zero: {to_zero})")
    triggers = spec["triggers"]
    if queue == "redis":
        types = {t["type"] for t in triggers}
        lag = [t for t in triggers if "lagCount" in t["metadata"]]
        # one lagCount trigger per priority lane (docs/queues.md): the stream and its two lanes
        streams = sorted(t["metadata"].get("stream", "") for t in lag)
        base = min(streams, key=len) if streams else ""
        if types != {"redis-streams"} or streams != sorted([base, base + ":lane:high", base + ":lane:low"]):
            fail(f"want a redis-streams trigger with lagCount on each lane: {triggers}")
        # KEDA 2.12-2.15 refuse a lagCount trigger without activationLagCount.
        elif any("activationLagCount" not in t["metadata"] for t in lag):
            fail("a lagCount trigger has no activationLagCount")
        for t in triggers:
            m = t["metadata"]
            for k in ("address", "stream", "consumerGroup"):
                if not m.get(k):
                    fail(f"redis-streams trigger without {k}")
    else:
        if len(triggers) != 1 or triggers[0]["type"] != "kafka":
            fail(f"want one kafka trigger: {triggers}")
        else:
            m = triggers[0]["metadata"]
            for k in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if not m.get(k):
                    fail(f"kafka trigger without {k}")
    # One queued job (lag 1) must wake the workers, an empty queue (lag 0) must not keep them.
    lag_triggers = [t for t in triggers if "lagCount" in t["metadata"] or t["type"] == "kafka"]
    if lag_triggers and not keda_active(lag_triggers[0], 1):
        fail(f"a lag of 1 does not activate the {lag_triggers[0]['type']} trigger: {lag_triggers[0]['metadata']}")
    if any(keda_active(t, 0) for t in triggers):
        fail("a trigger is active with nothing queued: the workers would never scale to zero")
    for t in triggers:  # KEDA wants every metadata value as a string
        for k, v in t["metadata"].items():
            if not isinstance(v, str):
                fail(f"trigger metadata {k} is {type(v).__name__}, KEDA wants strings")


def rendered(path, scenario):
    docs = load_docs(path)
    kinds = sorted({d["kind"] for d in docs})
    print(f"{scenario}: {len(docs)} documents: {', '.join(kinds)}")
    check_common(docs)
    if scenario == "default":
        want = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject",
                "ServiceAccount"}
        check_worker(docs, "redis")
        check_scaledobject(docs, "redis", to_zero=False)
        one(docs, "Deployment", "scheduler")
        one(docs, "Service", "scheduler")
    elif scenario == "kafka":
        want = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject",
                "ServiceMonitor", "Secret"}
        check_worker(docs, "kafka")
        check_scaledobject(docs, "kafka", to_zero=True)
        if by_kind(docs, "Deployment", "scheduler"):
            fail("scheduler rendered with scheduler.enabled=false")
        if len(by_kind(docs, "ServiceMonitor")) != 1:
            fail("want the workers' ServiceMonitor")
        c = container(one(docs, "Deployment", "worker"))
        if "--once" not in c.get("args", []):
            fail("worker.config.once did not become --once")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if "/etc/paella/webhook-secrets" not in mounts:
            fail("webhook secrets not mounted")
    elif scenario == "redis-full":
        want = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Secret", "Ingress"}
        check_worker(docs, "redis", gpu=False)
        if by_kind(docs, "ScaledObject"):
            fail("ScaledObject rendered with autoscaling.enabled=false")
        if one(docs, "Deployment", "worker").get("spec", {}).get("replicas") != 1:
            fail("fixed worker replicas missing without autoscaling")
        s3_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
        for component, keys in (("scheduler", {"PAELLA_API_KEY_HASHES", "redis-password"} | s3_keys),
                                ("worker", {"redis-password"} | s3_keys)):
            dep = one(docs, "Deployment", component)
            env = {e["name"]: e for e in container(dep).get("env", [])}
            if "$(PAELLA_REDIS_PASSWORD)@" not in env.get("PAELLA_QUEUE", {}).get("value", ""):
                fail(f"{component} queue URL does not take the Redis password from the Secret")
            url = env.get("PAELLA_QUEUE", {}).get("value", "")
            if not url.startswith("rediss://") or "&tls_ca=/etc/paella/redis-ca/ca.crt" not in url:
                fail(f"{component} queue URL is not rediss:// with the mounted CA: {url}")
            vols = {v["name"]: v for v in dep.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])}
            if vols.get("redis-ca", {}).get("secret", {}).get("secretName") != "redis-ca" or \
                    "/etc/paella/redis-ca" not in {m["mountPath"] for m in container(dep).get("volumeMounts", [])}:
                fail(f"{component}: the Redis CA Secret (queue.redis.tls.caSecret) is not mounted")
            secret = one(docs, "Secret", component)
            if set(secret.get("stringData", {})) != keys:
                fail(f"{component} Secret holds {sorted(secret.get('stringData', {}))}, want {sorted(keys)}")
            if secret and secret_refs(dep).keys() != {secret["metadata"]["name"]}:
                fail(f"{component} pods read {sorted(secret_refs(dep))}, not their own Secret")
            # both sides read the webhook secrets: the scheduler refuses unknown secret_ids
            c = container(dep)
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if "/etc/paella/webhook-secrets" not in mounts:
                fail(f"{component}: webhook secrets not mounted")
    elif scenario == "legacy-secret":
        # secrets.existingSecret alone: both components read it, as before the split.
        want = {"ConfigMap", "Deployment", "Service", "ScaledObject", "TriggerAuthentication"}
        if by_kind(docs, "Secret"):
            fail("the chart renders credentials although secrets.existingSecret is set")
        for component in ("scheduler", "worker"):
            refs = secret_refs(one(docs, "Deployment", component))
            if refs != {"paella-credentials": True}:
                fail(f"{component} reads {refs}, want the shared paella-credentials (optional)")
        auth = one(docs, "TriggerAuthentication")
        if auth.get("spec", {}).get("secretTargetRef", [{}])[0].get("name") != "paella-credentials":
            fail("KEDA does not read the Redis password from the shared Secret")
    elif scenario == "production":
        want = {"ConfigMap", "Deployment", "Service", "ScaledObject", "TriggerAuthentication",
                "StatefulSet", "NetworkPolicy"}
        check_worker(docs, "redis")
        check_scaledobject(docs, "redis", to_zero=True)
        check_production(docs)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    missing = want - set(kinds)
    if missing:
        fail(f"{scenario}: kinds missing: {sorted(missing)}")
    finish(f"rendered {scenario}")


def check_production(docs):
    """ci/production-values.yaml: the chart's Redis, per-component Secrets of the user's,
    NetworkPolicies, priority classes, topology spread and the extra env/volumes."""
    if by_kind(docs, "Secret"):
        fail("the chart renders credentials although both components name their own Secret")
    redis = one(docs, "StatefulSet", "redis")
    svc = one(docs, "Service", "redis")
    address = f"{svc.get('metadata', {}).get('name')}:6379"
    args = " ".join(container(redis).get("args", []))
    for want in ("--appendonly yes", "--maxmemory-policy noeviction", "--maxmemory 4gb",
                 '--requirepass "$PAELLA_REDIS_PASSWORD"'):
        if want not in args:
            fail(f"the chart's Redis does not run with {want}: {args}")
    claim = (redis.get("spec", {}).get("volumeClaimTemplates") or [{}])[0].get("spec", {})
    if claim.get("storageClassName") != "fast-ssd" or claim.get("resources", {}).get("requests", {}).get("storage") != "16Gi":
        fail(f"the Redis volume claim ignores redis.persistence: {claim}")
    for component, secret, priority in (("scheduler", "paella-scheduler-credentials", "paella-api"),
                                         ("worker", "paella-worker-credentials", "paella-gpu"),
                                         ("redis", "paella-worker-credentials", "paella-critical")):
        w = redis if component == "redis" else one(docs, "Deployment", component)
        pod = w.get("spec", {}).get("template", {}).get("spec", {})
        c = container(w)
        if pod.get("priorityClassName") != priority:
            fail(f"{component} priorityClassName is {pod.get('priorityClassName')!r}, want {priority}")
        if secret_refs(w) != {secret: True}:
            fail(f"{component} reads Secrets {secret_refs(w)}, want {secret} (optional)")
        if component == "redis":
            continue
        q = {e["name"]: e for e in c.get("env", [])}.get("PAELLA_QUEUE", {}).get("value", "")
        if f"$(PAELLA_REDIS_PASSWORD)@{address}/" not in q:
            fail(f"{component} queue URL {q!r} is not the chart's Redis ({address})")
        spread = pod.get("topologySpreadConstraints", [])
        own = w["spec"]["selector"]["matchLabels"]
        if len(spread) != 1 or not spread[0].get("labelSelector", {}).get("matchLabels"):
            fail(f"{component} topologySpreadConstraints: {spread}")
        elif component == "scheduler" and spread[0]["labelSelector"]["matchLabels"] != own:
            fail("a spread constraint without a labelSelector does not spread the scheduler's own pods")
        elif component == "worker" and spread[0]["labelSelector"]["matchLabels"] != {"app.kubernetes.io/component": "worker"}:
            fail("a spread constraint's own labelSelector was replaced")
        names = [e["name"] for e in c.get("env", [])]
        extra = {"scheduler": ["TZ"], "worker": ["NVIDIA_DRIVER_CAPABILITIES", "HTTPS_PROXY"]}[component]
        if names[-len(extra):] != extra:
            fail(f"{component} env does not end with the extraEnv entries {extra}: {names}")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        if mounts.get("ca-bundle") != "/etc/ssl/certs/corporate" or "ca-bundle" not in volumes:
            fail(f"{component}: extraVolumes/extraVolumeMounts missing: {mounts}, {volumes}")
    auth = one(docs, "TriggerAuthentication")
    if auth.get("spec", {}).get("secretTargetRef", [{}])[0].get("name") != "paella-worker-credentials":
        fail("KEDA does not read the Redis password from the workers' Secret")
    for t in one(docs, "ScaledObject").get("spec", {}).get("triggers", []):
        if t["metadata"].get("address") != address:
            fail(f"KEDA reads {t['metadata'].get('address')}, not the chart's Redis {address}")
    policies = {np["metadata"]["labels"]["app.kubernetes.io/component"]: np
                for np in by_kind(docs, "NetworkPolicy")}
    if set(policies) != {"scheduler", "worker", "redis"}:
        fail(f"NetworkPolicies for {sorted(policies)}, want scheduler, worker, redis")
        return
    peers = policies["redis"]["spec"]["ingress"][0].get("from", [])
    allowed = {p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") for p in peers}
    if not {"scheduler", "worker"} <= allowed or not any("namespaceSelector" in p for p in peers):
        fail(f"the chart's Redis is not open to the scheduler, the workers and KEDA: {peers}")
    for component, ns in (("scheduler", "ingress-nginx"), ("worker", "monitoring")):
        peers = policies[component]["spec"]["ingress"][0].get("from", [])
        if [p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") for p in peers] != [ns]:
            fail(f"{component} NetworkPolicy peers {peers}, want the {ns} namespace")


# ---- the chart's Redis, run -----------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RenderedRedis:
    """The chart's Redis container's command, run here with Debian's redis-server: only the
    data directory and the port differ from the pod (/data and 6379 are not ours to take)."""

    def __init__(self, statefulset, password):
        c = container(statefulset)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="paella-redis-")
        script = " ".join(c["command"][2:] + c["args"])
        if "--dir /data" not in script:
            raise SystemExit(f"the Redis command does not keep its data in /data: {script}")
        script = script.replace("--dir /data", f"--dir {self.dir}") + f" --port {self.port} --bind 127.0.0.1"
        self.env = dict(os.environ, PAELLA_REDIS_PASSWORD=password)
        self.log = open(Path(self.dir) / "redis.log", "w")
        self.proc = subprocess.Popen([c["command"][0], c["command"][1], script], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.probe = [a.replace("redis-cli", f"redis-cli -p {self.port}")
                      for a in c["readinessProbe"]["exec"]["command"]]

    def probe_ok(self, password):
        env = dict(os.environ, PAELLA_REDIS_PASSWORD=password)
        return subprocess.run(self.probe, env=env, capture_output=True, timeout=30).returncode == 0

    def cli(self, *args):
        env = dict(os.environ, REDISCLI_AUTH=self.env["PAELLA_REDIS_PASSWORD"])
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], env=env,
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0 or out.stdout.startswith(("ERR", "NOAUTH", "WRONGPASS")):
            raise RuntimeError(f"redis-cli {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout.splitlines()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def group_lag(r, stream, group):
    """XINFO GROUPS' lag of one group, as KEDA's lagCount reads it: 0 without the stream, the
    stream's length while the group does not exist yet, a null lag read as no lag."""
    if r.cli("EXISTS", stream) == ["0"]:
        return 0
    lines = r.cli("XINFO", "GROUPS", stream)
    for i in range(0, len(lines) - 1):
        if lines[i] == "name" and lines[i + 1] == group:
            fields = dict(zip(lines[i::2], lines[i + 1::2]))
            return int(fields.get("lag") or 0)
    return int(r.cli("XLEN", stream)[0])


def redis(path):
    docs = load_docs(path)
    statefulset = one(docs, "StatefulSet", "redis")
    triggers = one(docs, "ScaledObject").get("spec", {}).get("triggers", [])
    lag_trigger = next(t for t in triggers if "lagCount" in t["metadata"])
    pending_trigger = next(t for t in triggers if "pendingEntriesCount" in t["metadata"])
    stream, group = lag_trigger["metadata"]["stream"], lag_trigger["metadata"]["consumerGroup"]
    password = "ci-redis-password"
    r = RenderedRedis(statefulset, password)
    try:
        deadline = time.monotonic() + 60
        while not r.probe_ok(password):
            if r.proc.poll() is not None or time.monotonic() > deadline:
                fail(f"the chart's Redis did not become ready: {(Path(r.dir) / 'redis.log').read_text()[-2000:]}")
                return finish("redis")
            time.sleep(0.2)
        if r.probe_ok("wrong-password") or r.probe_ok(""):
            fail("the Redis readiness probe passes without the right password")
        config = {}
        for key in ("appendonly", "appendfsync", "maxmemory-policy", "maxmemory"):
            name, value = r.cli("CONFIG", "GET", key)
            config[name] = value
        want = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction",
                "maxmemory": str(4 * 1024 ** 3)}
        if config != want:
            fail(f"the chart's Redis runs with {config}, want {want}")
        print(f"redis-server {r.cli('INFO', 'server')[1:3]}: {config}")

        # Scaled to zero, nothing queued: no trigger may be active.
        if keda_active(lag_trigger, group_lag(r, stream, group)):
            fail("an empty queue activates the lag trigger")
        # One job submitted before any worker ever ran (the group does not exist yet).
        r.cli("XADD", stream, "*", "job", "{}")
        lag = group_lag(r, stream, group)
        print(f"one job, no consumer group yet: lag {lag}, active {keda_active(lag_trigger, lag)}")
        if lag != 1 or not keda_active(lag_trigger, lag):
            fail(f"one queued job (lag {lag}) does not wake the workers from zero")
        # The first worker creates the group from the stream's start, as worker/queue_redis.c.
        r.cli("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
        lag = group_lag(r, stream, group)
        if lag != 1 or not keda_active(lag_trigger, lag):
            fail(f"one queued job after the group's creation: lag {lag}, not active")
        r.cli("XREADGROUP", "GROUP", group, "worker-0", "COUNT", "1", "STREAMS", stream, ">")
        lag = group_lag(r, stream, group)
        pending = int(r.cli("XPENDING", stream, group)[0])
        print(f"claimed: lag {lag}, pending {pending}, active {keda_active(pending_trigger, pending)}")
        if keda_active(lag_trigger, lag) or not keda_active(pending_trigger, pending):
            fail(f"a claimed, unfinished job: lag {lag} / pending {pending} do not keep exactly the pending trigger active")
        entry = r.cli("XRANGE", stream, "-", "+")[0]
        r.cli("XACK", stream, group, entry)
        lag, pending = group_lag(r, stream, group), int(r.cli("XPENDING", stream, group)[0])
        if keda_active(lag_trigger, lag) or keda_active(pending_trigger, pending):
            fail(f"an acknowledged job keeps the workers up: lag {lag}, pending {pending}")
    finally:
        r.close()
    finish("redis")


# ---- values.schema.json --------------------------------------------------------------------
def merged(base, overlay):
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


def schema():
    sch = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(sch)
    validator = jsonschema.Draft7Validator(sch)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    files = [("values.yaml", {})] + [(f"ci/{p.name}", yaml.safe_load(p.read_text()))
                                     for p in sorted((CHART / "ci").glob("*-values.yaml"))]
    for name, overlay in files:
        # Helm validates the merged values, not the file alone.
        errors = list(validator.iter_errors(merged(defaults, overlay)))
        bad = name.startswith("ci/bad-")
        if bad and not errors:
            fail(f"{name} was accepted")
        elif bad:
            found = {"/".join(map(str, e.absolute_path)) or e.message for e in errors}
            print(f"{name}: rejected, {len(errors)} errors: {sorted(found)}")
            for want in ("queue/type", "worker/config", "worker/config/leaseMs", "storage/url",
                         "scheduler/topologySpreadConstraints/0", "scheduler/extraEnv/0"):
                if not any(f == want or (want == "worker/config" and "maxBtach" in f) for f in found | {
                        e.message for e in errors}):
                    fail(f"{name}: no error for {want}")
        elif errors:
            for e in errors:
                fail(f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        else:
            print(f"{name}: valid")
    finish("schema")


# ---- Dockerfiles ---------------------------------------------------------------------------
def dockerfile_instructions(text):
    """(instruction, arguments) with continuations joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        fail("Dockerfile ends in a line continuation")
    return out


def dockerfiles():
    files = sorted((ROOT / "deploy").glob("Dockerfile.*"))
    if {f.name for f in files} != {"Dockerfile.worker", "Dockerfile.scheduler"}:
        fail(f"deploy/ holds {[f.name for f in files]}")
    known = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "VOLUME",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL", "STOPSIGNAL", "SHELL", "ONBUILD"}
    for f in files:
        ins = dockerfile_instructions(f.read_text())
        stages, current = [], None
        for word, rest in ins:
            if word not in known:
                fail(f"{f.name}: unknown instruction {word}")
            if word == "FROM":
                m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
                if not m:
                    fail(f"{f.name}: FROM {rest}")
                    continue
                current = {"image": m.group(1), "name": (m.group(2) or "").lower(), "ins": []}
                stages.append(current)
                continue
            if current is None:
                if word != "ARG":
                    fail(f"{f.name}: {word} before the first FROM")
                continue
            current["ins"].append((word, rest))
        names = [s["name"] for s in stages]
        for i, st in enumerate(stages):
            if not st["name"]:
                fail(f"{f.name}: stage {i} ({st['image']}) has no name")
            for word, rest in st["ins"]:
                m = re.search(r"--from=(\S+)", rest)
                if word == "COPY" and m and m.group(1).lower() not in names[:i]:
                    fail(f"{f.name}: COPY --from={m.group(1)} is not an earlier stage")
                if word in ("ENTRYPOINT", "CMD") and rest.startswith("["):
                    json.loads(rest)  # exec form must be valid JSON
        final = stages[-1]
        words = [w for w, _ in final["ins"]]
        users = [r for w, r in final["ins"] if w == "USER"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            fail(f"{f.name}: the final stage does not switch to a non-root USER")
        if "HEALTHCHECK" not in words:
            fail(f"{f.name}: no HEALTHCHECK in the final stage")
        if "ENTRYPOINT" not in words:
            fail(f"{f.name}: no ENTRYPOINT")
        if not any(st["image"].startswith("debian:bookworm") for st in stages):
            fail(f"{f.name}: no Debian bookworm stage")
        if not any("install-deps.sh" in r for st in stages for w, r in st["ins"] if w == "RUN"):
            fail(f"{f.name}: does not build with scripts/install-deps.sh")
        if f.name == "Dockerfile.worker":
            if not any(st["image"].startswith("nvidia/cuda:") and "devel" in st["image"] for st in stages):
                fail("Dockerfile.worker: no nvidia/cuda devel stage")
            text = f.read_text()
            for want in ("-DPAELLA_CUDA=", "libcublasLt", "VOLUME /models"):
                if want not in text:
                    fail(f"Dockerfile.worker: no {want}")
        print(f"{f.name}: stages {', '.join(names)}; runs as {users[-1] if users else '?'}")
    finish("dockerfiles")


# ---- settings reachability -----------------------------------------------------------------
def help_options(text):
    """{flag: env-or-None} and the extra variables (AWS_*) from a --help text."""
    blocks, cur = [], None
    for line in text.splitlines():
        if re.match(r"\s{1,4}(-\w, )?--[a-z]", line):
            cur = [line]
            blocks.append(cur)
        elif cur is not None and line.startswith("      "):
            cur.append(line)
        else:
            cur = None
    options, extra = {}, set()
    for b in blocks:
        text = " ".join(b)
        flags = re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", text)
        envs = set(re.findall(r"\b(PAELLA_[A-Z0-9_]*[A-Z0-9])\b", text))
        extra |= set(re.findall(r"\b(AWS_[A-Z_]*[A-Z])\b", text))
        for fl in dict.fromkeys(flags):
            if fl == "help":
                continue
            want = "PAELLA_" + fl.upper().replace("-", "_")
            options[fl] = want if want in envs else None
    return options, extra


def chart_settings(path, component):
    """Variables and flags the chart sets for one component's container (ConfigMap, Secret,
    env, args)."""
    docs = load_docs(path)
    dep = one(docs, "Deployment", component)
    c = container(dep)
    names = {e["name"] for e in c.get("env", [])}
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    for ref in c.get("envFrom", []):
        if "configMapRef" in ref:
            names |= set(cms.get(ref["configMapRef"]["name"], {}).get("data", {}))
        if "secretRef" in ref:
            names |= set(secrets.get(ref["secretRef"]["name"], {}).get("stringData", {}))
    flags = {a.split("=")[0][2:] for a in c.get("args", []) if a.startswith("--")}
    return names, flags


def compose_settings(service):
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = doc["services"][service]
    env = svc.get("environment", {})
    names = set(env if isinstance(env, dict) else (e.split("=")[0] for e in env))
    cmd = svc.get("command", [])
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    flags = {a.split("=")[0][2:] for a in cmd if a.startswith("--")}
    return names, flags, (ROOT / "docker-compose.yml").read_text()


def settings(help_worker, help_scheduler, render_worker, render_scheduler):
    for binary, help_file, render, component, service in (
            ("paella-worker", help_worker, render_worker, "worker", "worker"),
            ("paella-scheduler", help_scheduler, render_scheduler, "scheduler", "scheduler")):
        options, extra = help_options(Path(help_file).read_text())
        if not options:
            fail(f"{binary}: no options found in its --help")
            continue
        known_env = {e for e in options.values() if e} | extra
        c_names, c_flags = chart_settings(render, component)
        d_names, d_flags, d_text = compose_settings(service)
        for fl, env in sorted(options.items()):
            if env:
                if env not in c_names and fl not in c_flags:
                    fail(f"{binary} --{fl} ({env}): not set by the chart")
                if env not in d_names and fl not in d_flags:
                    fail(f"{binary} --{fl} ({env}): not in docker-compose.yml's {service} service")
            else:
                if fl not in c_flags:
                    fail(f"{binary} --{fl} (flag only): not passed as an argument by the chart")
                if fl not in d_flags and f"--{fl}" not in d_text:
                    fail(f"{binary} --{fl} (flag only): not reachable in docker-compose.yml")
        for env in sorted(extra):
            if env not in c_names:
                fail(f"{binary} {env}: not set by the chart")
            if env not in d_names:
                fail(f"{binary} {env}: not in docker-compose.yml's {service} service")
        # The other way round: every variable or flag the chart passes must exist, or the
        # setting would be silently ignored.
        for env in sorted(n for n in c_names | d_names if n.startswith(("PAELLA_", "AWS_"))):
            if env not in known_env and env != "PAELLA_REDIS_PASSWORD":
                fail(f"{binary}: the chart or compose file sets {env}, which --help does not list")
        for fl in sorted(c_flags | d_flags):
            if fl not in options:
                fail(f"{binary}: the chart or compose file passes --{fl}, which --help does not list")
        print(f"{binary}: {len(options)} options ({sum(1 for e in options.values() if e)} with a "
              f"variable), {len(extra)} AWS variables")
    finish("settings")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"rendered": rendered, "schema": schema, "dockerfiles": dockerfiles, "settings": settings,
     "redis": redis}[cmd](*args)
