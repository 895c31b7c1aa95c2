"""The Kubernetes objects of a KVCluster, built by pure functions: spec (and the plan's shape) in, manifests
(plain dicts, as the API takes them) out. Nothing here reads the cluster.

Per KVCluster NAME in namespace NS:

    ConfigMap            NAME-config   node settings as RINGKV_* variables (spec.config, quorums, seeds...)
    Service (headless)   NAME-peers    stable pod DNS NAME-...-k.NAME-peers.NS.svc, ready or not (seeds resolve
                                       while the cluster bootstraps); ports peer 7070, http 8080
    Service              NAME          the HTTP API (port "http" 8080) over ready nodes; scraped for metrics
    PodDisruptionBudget  NAME          maxUnavailable 1 over all the cluster's nodes
    StatefulSet          NAME          the nodes; with racks one per rack, NAME-RACK, pinned to the rack's zone
    Secrets              NAME-ca, NAME-node-tls, NAME-tokens, NAME-admin-token (`certs`; unless insecure)
    Certificate          NAME-node-tls (cert-manager.io, with spec.security.mode cert-manager, instead of NAME-ca)

The node pods run on distinct Kubernetes nodes (required anti-affinity per hostname over all the cluster's pods,
with spec.antiAffinity Required, the default): with fewer schedulable Kubernetes nodes than pods the extra pods
stay Pending (their FailedScheduling events say why; the KVCluster's Ready stays below its Size) until nodes are
added or spec.antiAffinity is Preferred. A rack runs on the nodes its zone and nodeLabels select (required node
affinity); a StatefulSet not pinned to a zone spreads its pods over zones where it can (a topology spread
constraint that never blocks scheduling). spec.podTemplate is laid over the pod template last (`podtemplate`).

Every object carries the cluster's labels and a controller ownerReference to the KVCluster. A node's identity
is its pod name (RINGKV_NODE_ID); it advertises its pod DNS name; it allocates its own tokens at first start
(asking the seeds) and keeps them on its volume, so nothing here plans tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ringkv_operator import certs, plan, podtemplate
from ringkv_operator import spec as specmod
from ringkv_operator.settings import Settings

HTTP_PORT = 8080
PEER_PORT = 7070
DATA_MOUNT = podtemplate.MOUNTS["data"]
DATA_DIR = f"{DATA_MOUNT}/data"
UID = 10001
CONFIG_HASH_ANNOTATION = "ringkv.io/config-hash"
SERVICE_ROLE_LABEL = "ringkv.io/service"
CONTAINER = podtemplate.CONTAINER
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Kubernetes sends SIGTERM, the node drains for shutdown_timeout_s (default 10 s), then flushes and fsyncs
# its memtable; the grace period leaves room for both before SIGKILL.
MIN_GRACE_SECONDS = 60
DRAIN_DELAY_SECONDS = 5.0  # RINGKV_DRAIN_DELAY_S unless spec.config sets drain_delay_s
FLUSH_MARGIN_SECONDS = 30


CERTS_MOUNT = podtemplate.MOUNTS["certs"]
TOKENS_MOUNT = podtemplate.MOUNTS["tokens"]
TMP_MOUNT = podtemplate.MOUNTS["tmp"]


def cluster_name(spec: specmod.ClusterSpec) -> str:
    """The nodes' --cluster-name (and their certificate's cluster): unique across namespaces."""
    return f"{spec.namespace}/{spec.name}"


def ca_secret_name(name: str) -> str:
    return f"{name}-ca"


def node_tls_secret_name(name: str) -> str:
    return f"{name}-node-tls"


def tokens_secret_name(name: str) -> str:
    return f"{name}-tokens"


def admin_token_secret_name(name: str) -> str:
    return f"{name}-admin-token"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def peer_service_name(name: str) -> str:
    return f"{name}-peers"


# -- labels and ownership ----------------------------------------------------------------------------------------


def selector_labels(spec: specmod.ClusterSpec) -> dict[str, str]:
    """Labels that select the cluster's node pods (all racks)."""
    return {"app.kubernetes.io/name": "ringkv", "app.kubernetes.io/instance": spec.name,
            "app.kubernetes.io/component": "node"}


def selector(spec: specmod.ClusterSpec) -> str:
    """The pods' label selector as a string (the status' `selector`, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(spec).items()))


def labels(spec: specmod.ClusterSpec, component: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "ringkv", "app.kubernetes.io/instance": spec.name,
           "app.kubernetes.io/managed-by": "ringkv-operator", "app.kubernetes.io/part-of": "ringkv"}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def owned_labels(name: str) -> dict[str, str]:
    """Labels every object the operator makes for the cluster NAME carries."""
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": "ringkv-operator"}


def claim_labels(name: str) -> dict[str, str]:
    """Labels of the nodes' PersistentVolumeClaims (from the StatefulSets' claim template)."""
    return {"app.kubernetes.io/name": "ringkv", "app.kubernetes.io/instance": name}


def owner_reference(spec: specmod.ClusterSpec) -> dict[str, Any]:
    return {"apiVersion": f"{specmod.API_GROUP}/{specmod.API_VERSION}", "kind": specmod.KIND, "name": spec.name,
            "uid": spec.uid, "controller": True, "blockOwnerDeletion": True}


def _metadata(spec: specmod.ClusterSpec, name: str, extra_labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": {**labels(spec), **extra_labels},
            "ownerReferences": [owner_reference(spec)]}


# -- node settings -----------------------------------------------------------------------------------------------


def node_address(spec: specmod.ClusterSpec, pod: str) -> str:
    return f"{pod}.{peer_service_name(spec.name)}.{spec.namespace}.svc"


def node_settings(spec: specmod.ClusterSpec, shape: Sequence[plan.RackSet]) -> dict[str, str]:
    """The ConfigMap's data: every `ringkv node` setting the pods share, as RINGKV_* variables."""
    data = {
        "RINGKV_HOST": "0.0.0.0",
        "RINGKV_PORT": str(HTTP_PORT),
        "RINGKV_PEER_PORT": str(PEER_PORT),
        "RINGKV_DATA_DIR": DATA_DIR,
        "RINGKV_CLUSTER_NAME": cluster_name(spec),
        "RINGKV_SEEDS": ",".join(f"{node_address(spec, pod)}:{PEER_PORT}" for pod in plan.seeds(spec)),
        "RINGKV_REPLICATION_FACTOR": str(spec.replication_factor),
        "RINGKV_READ_QUORUM": str(spec.read_quorum),
        "RINGKV_WRITE_QUORUM": str(spec.write_quorum),
        # after SIGTERM: announced as stopping, not ready, still serving while the endpoints drop the pod
        "RINGKV_DRAIN_DELAY_S": f"{DRAIN_DELAY_SECONDS:g}",
    }
    for key, value in spec.config:
        data["RINGKV_" + key.upper()] = value
    return data


def config_hash(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def grace_seconds(spec: specmod.ClusterSpec) -> int:
    """terminationGracePeriodSeconds: the drain delay, the in-flight requests' time, the flush."""
    config = dict(spec.config)
    shutdown = float(config.get("shutdown_timeout_s", "10"))
    drain = float(config.get("drain_delay_s", f"{DRAIN_DELAY_SECONDS:g}"))
    return max(MIN_GRACE_SECONDS, int(shutdown + drain + 0.999) + FLUSH_MARGIN_SECONDS)


# -- objects -----------------------------------------------------------------------------------------------------


def config_map(spec: specmod.ClusterSpec, shape: Sequence[plan.RackSet]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(spec, config_map_name(spec.name), {"app.kubernetes.io/component": "config"}),
            "data": node_settings(spec, shape)}


def peer_service(spec: specmod.ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(spec, peer_service_name(spec.name), {SERVICE_ROLE_LABEL: "peers"}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # seeds must resolve before they are ready
            "selector": selector_labels(spec),
            "ports": [{"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
                      {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def client_service(spec: specmod.ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(spec, spec.name, {SERVICE_ROLE_LABEL: "client"}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def disruption_budget(spec: specmod.ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, spec.name, {"app.kubernetes.io/component": "node"}),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def _pod_selector(spec: specmod.ClusterSpec, rack_set: plan.RackSet) -> dict[str, str]:
    out = selector_labels(spec)
    if rack_set.rack is not None:
        out[plan.RACK_LABEL] = rack_set.rack
    return out


def _node_affinity(spec: specmod.ClusterSpec, rack_set: plan.RackSet) -> dict[str, Any] | None:
    """A rack's zone and node labels as one required node selector term (all of them must match)."""
    expressions = [{"key": specmod.ZONE_LABEL, "operator": "In", "values": [rack_set.zone]}] if rack_set.zone else []
    expressions += [{"key": key, "operator": "In", "values": [value]}
                    for key, value in spec.rack_node_labels(rack_set.rack)]
    if not expressions:
        return None
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": expressions}]}}


def _pod_anti_affinity(spec: specmod.ClusterSpec) -> dict[str, Any]:
    """No two nodes of the cluster (any rack) on one Kubernetes node: required, or only preferred."""
    term = {"topologyKey": HOSTNAME_LABEL, "labelSelector": {"matchLabels": selector_labels(spec)}}
    if spec.anti_affinity == "Required":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}


def _affinity(spec: specmod.ClusterSpec, rack_set: plan.RackSet) -> dict[str, Any]:
    affinity = {"podAntiAffinity": _pod_anti_affinity(spec)}
    node = _node_affinity(spec, rack_set)
    if node is not None:
        affinity["nodeAffinity"] = node
    return affinity


def _spread(spec: specmod.ClusterSpec, rack_set: plan.RackSet) -> list[dict[str, Any]]:
    """A StatefulSet not pinned to a zone spreads its pods over the zones, as evenly as the scheduler can
    without leaving a pod Pending for it."""
    if rack_set.zone is not None:
        return []
    return [{"maxSkew": 1, "topologyKey": specmod.ZONE_LABEL, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": _pod_selector(spec, rack_set)}}]


def _scheduling(spec: specmod.ClusterSpec, rack_set: plan.RackSet) -> dict[str, Any]:
    """The pod spec's fields that say where the pod runs and what it is given to get there."""
    out: dict[str, Any] = {"affinity": _affinity(spec, rack_set)}
    optional = {"topologySpreadConstraints": _spread(spec, rack_set), "nodeSelector": dict(spec.node_selector),
                "tolerations": [dict(t) for t in spec.tolerations], "priorityClassName": spec.priority_class,
                "imagePullSecrets": [{"name": name} for name in spec.image_pull_secrets]}
    out.update({key: value for key, value in optional.items() if value})
    return out


def _probe(path: str, period: int, failures: int, https: bool = False) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http", "scheme": "HTTPS" if https else "HTTP"},
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}


# -- security ----------------------------------------------------------------------------------------------------


def node_dns_names(spec: specmod.ClusterSpec) -> list[str]:
    """The names in the nodes' certificate: every pod by its peer-Service name, the client Service, loopback."""
    peers, ns, out = peer_service_name(spec.name), spec.namespace, []
    for domain in (f"{ns}.svc", f"{ns}.svc.cluster.local"):
        out += [f"*.{peers}.{domain}", f"{spec.name}.{domain}"]
    return [*out, f"{spec.name}.{ns}", spec.name, "localhost", "127.0.0.1"]


def secret(spec: specmod.ClusterSpec, name: str, data: Mapping[str, bytes], kind: str = "Opaque") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": _metadata(spec, name, {"app.kubernetes.io/component": "security"}),
            "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}}


def certificate(spec: specmod.ClusterSpec) -> dict[str, Any]:
    """The cert-manager Certificate of the nodes (spec.security.mode cert-manager): into NAME-node-tls."""
    assert spec.issuer is not None
    name, kind, group = spec.issuer
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": _metadata(spec, node_tls_secret_name(spec.name), {"app.kubernetes.io/component": "security"}),
            "spec": {"secretName": node_tls_secret_name(spec.name), "commonName": f"ringkv nodes {spec.name}"[:64],
                     "dnsNames": [n for n in node_dns_names(spec) if not n[0].isdigit()],
                     "ipAddresses": ["127.0.0.1"], "uris": [certs.node_identity(cluster_name(spec))],
                     "usages": ["server auth", "client auth", "digital signature"],
                     "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                     "duration": f"{certs.NODE_DAYS * 24}h", "issuerRef": {"name": name, "kind": kind, "group": group}}}


def _security_env(spec: specmod.ClusterSpec) -> list[dict[str, Any]]:
    if not spec.secure:
        return [{"name": "RINGKV_INSECURE", "value": "true"}]
    env = [{"name": "RINGKV_CERTS_DIR", "value": CERTS_MOUNT},
           {"name": "RINGKV_TOKENS_FILE", "value": f"{TOKENS_MOUNT}/tokens"}]
    return env + ([{"name": "RINGKV_HTTP_TLS", "value": "true"}] if spec.https else [])


def _security_volumes(spec: specmod.ClusterSpec) -> list[dict[str, Any]]:
    if not spec.secure:
        return []
    items = [{"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "node.crt"},
             {"key": "tls.key", "path": "node.key"}]
    return [{"name": "certs", "secret": {"secretName": node_tls_secret_name(spec.name), "items": items,
                                         "defaultMode": 0o440}},
            {"name": "tokens", "secret": {"secretName": tokens_secret_name(spec.name), "defaultMode": 0o440}}]


def _container(spec: specmod.ClusterSpec, rack_set: plan.RackSet, settings: Settings) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "RINGKV_NODE_ID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "RINGKV_ADVERTISE_HOST",
         "value": f"$(RINGKV_NODE_ID).{peer_service_name(spec.name)}.{spec.namespace}.svc"},
        *_security_env(spec),
    ]
    if rack_set.rack is not None:
        env.append({"name": "RINGKV_RACK", "value": rack_set.rack})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.node_image,
        "imagePullPolicy": settings.node_image_pull_policy,
        "command": ["ringkv", "node"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": config_map_name(spec.name)}}],
        "env": env,
        # The node answers /health from before its storage replay (of any size: it runs off the event loop)
        # and its join, so liveness holds through both; /ready gates traffic. The startup probe only covers
        # the process coming up (up to 10 minutes: slow volumes, a cold image cache).
        "startupProbe": _probe("/health", 5, 120, spec.https),
        "livenessProbe": _probe("/health", 10, 6, spec.https),
        "readinessProbe": _probe("/ready", 5, 3, spec.https),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}, {"name": "tmp", "mountPath": TMP_MOUNT},
                         *([{"name": "certs", "mountPath": CERTS_MOUNT, "readOnly": True},
                            {"name": "tokens", "mountPath": TOKENS_MOUNT, "readOnly": True}] if spec.secure else [])],
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    return container


def statefulset(spec: specmod.ClusterSpec, rack_set: plan.RackSet, shape: Sequence[plan.RackSet],
                settings: Settings) -> dict[str, Any]:
    pod_labels = {**labels(spec, "node"), **_pod_selector(spec, rack_set)}
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": selector_labels(spec)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.storage_size}}},
    }
    if spec.storage_class:
        claim["spec"]["storageClassName"] = spec.storage_class
    if rack_set.rack is not None:
        claim["metadata"]["labels"][plan.RACK_LABEL] = rack_set.rack
    sts: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _metadata(spec, rack_set.name, {"app.kubernetes.io/component": "node",
                                                    **({plan.RACK_LABEL: rack_set.rack} if rack_set.rack else {})}),
        "spec": {
            "serviceName": peer_service_name(spec.name),
            "replicas": rack_set.replicas,
            # One pod at a time: the first node allocates its tokens alone, each later one balances against
            # the ring it finds through the seeds.
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "minReadySeconds": 5,  # a restarted node is gossiped back in before the next one goes down
            "revisionHistoryLimit": 10,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete" if spec.delete_volumes else "Retain",
                                                     "whenScaled": "Retain"},
            "selector": {"matchLabels": _pod_selector(spec, rack_set)},
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {CONFIG_HASH_ANNOTATION: config_hash(node_settings(spec, shape))}},
                "spec": {
                    "enableServiceLinks": False,  # a Service named "ringkv" would inject RINGKV_PORT=tcp://...
                    "automountServiceAccountToken": False,  # the nodes never call the Kubernetes API
                    "terminationGracePeriodSeconds": grace_seconds(spec),
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                        "fsGroupChangePolicy": "OnRootMismatch",
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    **_scheduling(spec, rack_set),
                    "containers": [_container(spec, rack_set, settings)],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *_security_volumes(spec)],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
    template = sts["spec"]["template"] = podtemplate.apply(sts["spec"]["template"], spec.pod_template)
    template["metadata"]["annotations"][plan.TEMPLATE_HASH_ANNOTATION] = config_hash(template)
    # replicas are left out: the size is the scaling policy's to change, not a drift of the manifest
    unsized = {**sts, "spec": {k: v for k, v in sts["spec"].items() if k != "replicas"}}
    sts["metadata"]["annotations"] = {plan.SPEC_HASH_ANNOTATION: config_hash(unsized)}
    return sts


def statefulsets(spec: specmod.ClusterSpec, shape: Sequence[plan.RackSet], settings: Settings) -> list[dict[str, Any]]:
    return [statefulset(spec, rack_set, shape, settings) for rack_set in shape]


def all_objects(spec: specmod.ClusterSpec, shape: Sequence[plan.RackSet], settings: Settings) -> list[dict[str, Any]]:
    """Everything the operator owns for the cluster, in the order to create it (config and Services before
    the pods that need them)."""
    return [config_map(spec, shape), peer_service(spec), client_service(spec), disruption_budget(spec),
            *statefulsets(spec, shape, settings)]
