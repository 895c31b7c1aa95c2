"""The kubelet's Secret volumes, for kubefake: a pod's `secret` volumes become directories on this machine
holding the Secret's keys (or its `items`, renamed), kept current while the pod runs, as the kubelet does.

Like the kubelet's atomic writer, each version is written whole into its own directory and the mount path is
a symlink switched to it in one rename, so a reader never sees one file new and the other old. A missing
Secret (or key) keeps the container from starting, as it does in a real cluster (ContainerCreating).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

from .kubefake_api import NS, Emulator

SECRETS = f"/api/v1/namespaces/{NS}/secrets"


class MissingSecret(Exception):
    pass


class SecretVolumes:
    """The secret volumes of one pod, under `root`."""

    def __init__(self, api: Emulator, root: Path, template: dict[str, Any]) -> None:
        self.api = api
        self.root = root
        spec = template["spec"]
        [container] = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
        self.volumes = [(v["name"], v["secret"], mounts[v["name"]]) for v in spec.get("volumes") or []
                        if "secret" in v and v["name"] in mounts]
        self._written: dict[str, dict[str, bytes]] = {}
        self._versions = 0

    def host_path(self, name: str) -> Path:
        return self.root / name

    def rewrite(self, value: str) -> str:
        """An environment value naming a file under a secret volume's mount path, moved to its host path."""
        for name, _, mount in self.volumes:
            if value == mount or value.startswith(mount + "/"):
                return str(self.host_path(name)) + value[len(mount):]
        return value

    def sync(self) -> bool:
        """Write every volume whose Secret changed; True if any did. Raises MissingSecret."""
        changed = False
        for name, source, _ in self.volumes:
            secret = self.api.get(f"{SECRETS}/{source['secretName']}")
            if secret is None:
                raise MissingSecret(f"Secret {source['secretName']} does not exist")
            data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
            items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
            files = {}
            for item in items:
                if item["key"] not in data:
                    raise MissingSecret(f"Secret {source['secretName']} has no key {item['key']}")
                files[item["path"]] = data[item["key"]]
            if self._written.get(name) == files:
                continue
            self._write(name, files, int(source.get("defaultMode", 0o644)))
            self._written[name] = files
            changed = True
        return changed

    def _write(self, name: str, files: dict[str, bytes], mode: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._versions += 1
        version = self.root / f"..{name}.{self._versions}"
        version.mkdir()
        for path, content in files.items():
            target = version / path
            target.write_bytes(content)
            os.chmod(target, mode | 0o600)  # the node runs as this user here: it must read its files
        link = self.root / name
        tmp = self.root / f"..{name}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version.name)
        old = link.resolve() if link.is_symlink() else None
        os.replace(tmp, link)
        if old is not None and old != version:
            shutil.rmtree(old, ignore_errors=True)
