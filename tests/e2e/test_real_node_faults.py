"""A real node that cannot start: `up --real-node` names what is missing and creates nothing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import pytest

from .e2e_cluster import CLUSTER_SCRIPTS, runtime
from .host import CACHE, host_state

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(runtime() != "real-node", reason="only where the suite runs on the local real node"),
]

KUBELET_PORT = 10250
COREDNS_PORT = 10053  # UDP: the node's cluster DNS


@pytest.mark.parametrize(
    ("kind", "port", "message"),
    [
        (socket.SOCK_STREAM, KUBELET_PORT, f"port {KUBELET_PORT} is in use"),
        (socket.SOCK_DGRAM, COREDNS_PORT, f"UDP port {COREDNS_PORT} is in use"),
    ],
    ids=["kubelet-tcp", "coredns-udp"],
)
def test_port_in_use_fails_up_naming_it_and_leaves_nothing(kind: socket.SocketKind, port: int, message: str) -> None:
    name = "fraudmodel-e2e-fault"
    before = host_state()
    with contextlib.ExitStack() as stack:
        # Hold the port (or find it held already, e.g. by the session's real node).
        sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
        with contextlib.suppress(OSError):
            sock.bind(("0.0.0.0", port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
        result = subprocess.run(
            [str(CLUSTER_SCRIPTS / "up"), "--real-node", "--name", name],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "FRAUDMODEL_CLUSTER_RUNTIME": "kwok"},
            check=False,
        )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not (CACHE / "clusters" / name).exists(), "no cluster state was created"
    assert not (CACHE / "kwok" / "clusters" / name).exists(), "no control plane was started"
    assert host_state().difference(before).empty
