"""Network namespaces as test hosts: a bridge in the root namespace and one namespace per host on a veth pair.

Every host gets its own address on a private /24 that no existing route covers; the bridge (the root
namespace, where the test process and the shared services run) is `.1`. Needs root and iproute2 (`ip netns`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from collections.abc import Sequence

_PREFIX = "rdt"  # every interface and namespace this module makes starts with it (easy to spot and clean up)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def namespaces_unavailable_reason() -> str | None:
    """None when namespaces, veth pairs and bridges can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{_PREFIX}probe{os.getpid() % 100000}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "iproute2 (`ip`) is not installed"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        link = _ip("link", "add", f"{probe}b", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"`ip link add type bridge` failed: {link.stderr.strip()}"
        _ip("link", "del", f"{probe}b", check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.x.0/24 that overlaps no route already on this machine."""
    routes = _ip("-4", "route", "show", "table", "all").stdout.split()
    taken = []
    for word in routes:
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    start = os.getpid() % 200
    for offset in range(250):
        candidate = ipaddress.IPv4Network(f"10.213.{(start + offset) % 250 + 1}.0/24")
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.213.x.0/24 subnet for the test network")


class NamespaceNetwork:
    """`hosts` namespaces bridged together; `.address(host)` is each one's IP, `.gateway` the root side's."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.tag = f"{os.getpid() % 100000:x}"
        self.hosts = list(hosts)
        self.bridge = f"{_PREFIX}b{self.tag}"
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self._addresses = {host: str(addresses[i + 1]) for i, host in enumerate(self.hosts)}
        self._veths = {host: f"{_PREFIX}v{self.tag}{i}" for i, host in enumerate(self.hosts)}

    def namespace(self, host: str) -> str:
        return f"{_PREFIX}{self.tag}-{host}"

    def address(self, host: str) -> str:
        return self._addresses[host]

    def exec_prefix(self, host: str) -> list[str]:
        """Prefix a command with this to run it inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def create(self) -> NamespaceNetwork:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                ns, veth = self.namespace(host), self._veths[host]
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
                _ip("link", "set", f"{veth}p", "netns", ns)
                _ip("-n", ns, "link", "set", f"{veth}p", "name", "eth0")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/{self.subnet.prefixlen}", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "route", "add", "default", "via", self.gateway)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
        except subprocess.CalledProcessError as exc:
            self.destroy()
            raise RuntimeError(f"test network setup failed: {' '.join(exc.cmd)}: {exc.stderr.strip()}") from exc
        return self

    def pids(self, host: str) -> list[int]:
        out = _ip("netns", "pids", self.namespace(host), check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self, host: str) -> int:
        """SIGKILL every process in `host`'s namespace (a node losing power); returns how many."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def disconnect(self, host: str) -> None:
        """Cut `host` off the network (its processes live on, unreachable)."""
        _ip("link", "set", self._veths[host], "down")

    def reconnect(self, host: str) -> None:
        _ip("link", "set", self._veths[host], "up")

    def destroy(self) -> None:
        for host in self.hosts:
            self.kill_all(host)
            _ip("link", "del", self._veths[host], check=False)
            _ip("netns", "del", self.namespace(host), check=False)
        _ip("link", "del", self.bridge, check=False)
