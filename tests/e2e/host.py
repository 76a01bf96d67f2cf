"""What a real node can leave on the host: network devices, mounts, iptables rules, cgroups, sysctls.

``host_state()`` before ``scripts/cluster/up --real-node`` and after ``down``; the difference
must be empty. Only what the node touches is read, so other work on the machine rarely shows.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("FRAUDMODEL_CACHE", Path.home() / ".cache" / "fraudmodel-operator"))
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.conf.all.route_localnet",
)
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def _lines(*cmd: str) -> frozenset[str]:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False).stdout
    except FileNotFoundError:
        return frozenset()
    return frozenset(_COUNTERS.sub("", line) for line in out.splitlines() if line and not line.startswith("#"))


def _sysctl(name: str) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else "-"


def _cgroups() -> frozenset[str]:
    roots = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[2] in {"cgroup", "cgroup2"}
    ]
    return frozenset(str(p) for root in roots for p in Path(root).glob("fraudmodel*"))


@dataclass(frozen=True)
class HostState:
    links: frozenset[str]
    mounts: frozenset[str]
    rules: frozenset[str]
    cgroups: frozenset[str]
    sysctls: frozenset[str]

    def difference(self, before: HostState) -> HostState:
        """What is here and was not ``before`` (sysctls: values that changed)."""
        return HostState(
            self.links - before.links,
            self.mounts - before.mounts,
            self.rules - before.rules,
            self.cgroups - before.cgroups,
            self.sysctls - before.sysctls,
        )

    @property
    def empty(self) -> bool:
        return not (self.links or self.mounts or self.rules or self.cgroups or self.sysctls)


def host_state() -> HostState:
    links = frozenset(line.split(":")[1].strip().split("@")[0] for line in _lines("ip", "-o", "link", "show"))
    mounts = frozenset(
        m
        for m in _lines("findmnt", "-rn", "-o", "TARGET")
        if m.startswith((str(CACHE), "/run/containerd", "/run/netns"))
    )
    rules = _lines("iptables-save") | _lines("ip6tables-save")
    return HostState(links, mounts, rules, _cgroups(), frozenset(f"{s}={_sysctl(s)}" for s in SYSCTLS))
