"""The namespace hosts the multi-node tests run on: separate stacks, Debian-style names, a full teardown."""

import subprocess
import sys
import time

import pytest

from tests.distributed.hosts import HostNet, leftovers, unavailable

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); print("listening", flush=True)
c, peer = s.accept(); c.sendall(socket.gethostname().encode() + b" " + peer[0].encode()); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); print(c.recv(100).decode())
"""


def test_hosts_have_their_own_names_addresses_and_stacks(namespace_hosts):
    net = namespace_hosts(2)
    node1, node2 = net.hosts
    # Debian's /etc/hosts: the own name is 127.0.1.1, the others' names their addresses
    seen = node1.run([sys.executable, "-c", "import socket; print(socket.gethostname(), "
                      "socket.gethostbyname(socket.gethostname()), socket.gethostbyname('node2'))"],
                     capture_output=True, text=True)
    assert seen.stdout.split() == ["node1", "127.0.1.1", node2.address], seen.stderr
    server = node1.popen([sys.executable, "-c", ECHO_SERVER, "7001"], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "listening"
    reply = node2.run([sys.executable, "-c", CLIENT, "node1", "7001"], capture_output=True, text=True)
    assert reply.stdout.split() == ["node1", node2.address], reply.stderr
    # a lost host: link down, nothing of it answers any more
    server2 = node1.popen([sys.executable, "-c", ECHO_SERVER, "7002"], stdout=subprocess.PIPE, text=True)
    assert server2.stdout.readline().strip() == "listening"
    node1.lose()
    lost = node2.run([sys.executable, "-c", CLIENT, node1.address, "7002"], capture_output=True, text=True)
    assert lost.returncode != 0
    assert server2.wait(timeout=10) == -9


def test_teardown_leaves_nothing_even_when_the_body_fails():
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="the test failed"), HostNet(2, rate_mbit=100) as net:
        sleeper = net.hosts[1].popen(["sleep", "600"])
        # the host's shell runs `hostname` in a child before it execs sleep: wait for that to pass
        deadline = time.monotonic() + 10
        while net.hosts[1].pids() != [sleeper.pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert net.hosts[1].pids() == [sleeper.pid]
        raise RuntimeError("the test failed")
    assert sleeper.poll() is not None
    assert leftovers(net.tag) == []
