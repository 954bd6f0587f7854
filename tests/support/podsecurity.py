"""Kubernetes' "restricted" Pod Security Standard as a check on a pod spec: the rules the
admission controller applies at ``pod-security.kubernetes.io/enforce: restricted``
(version latest), baseline's included, so a chart test can say whether a namespace that
enforces it would admit the pods. Returns the violations as text, none when admitted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
           "persistentVolumeClaim", "projected", "secret"}
"""The only volume types restricted allows (so no hostPath)."""
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t",
                 "container_engine_t"}


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """What in this pod spec the restricted profile refuses."""
    out: list[str] = []
    pod = spec.get("securityContext") or {}
    containers = list(_containers(spec))
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field} is true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= VOLUMES:
            out.append(f"volume {volume['name']} is {sorted(kinds)}")
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl['name']}")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"AppArmor {value}")

    def effective(container: dict[str, Any], field: str) -> Any:
        own = (container.get("securityContext") or {}).get(field)
        return own if own is not None else pod.get(field)

    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{name}: hostProcess")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        if effective(container, "runAsNonRoot") is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if effective(container, "runAsUser") == 0:
            out.append(f"{name}: runAsUser is 0")
        seccomp = effective(container, "seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is {seccomp.get('type')}")
        apparmor = effective(container, "appArmorProfile") or {}
        if apparmor.get("type") == "Unconfined":
            out.append(f"{name}: AppArmor Unconfined")
        selinux = effective(container, "seLinuxOptions") or {}
        if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get(
                "role"):
            out.append(f"{name}: seLinuxOptions {selinux}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {sc['procMount']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort {port['hostPort']}")
    return out
