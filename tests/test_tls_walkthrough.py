"""The README's delegation walk-through, end to end, with the real
albatrossd (with the console stub and stand-in tender of its tests), the real albatross-tls-endpoint and
albatross-client processes on loopback:

generate; add-policy user ... --csr; sign; create hello ... --csr; sign;
certificate --destination; and the one-shot --ca/--ca-key/--server-ca form.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from albatross.policy.names import Name
from albatross.wire import messages as m

from solo5_fixtures import build_image
from test_albatrossd_e2e import BIN, Albatross, needs_root

pytestmark = needs_root


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def setup(tmp_path):
    alb = Albatross(tmp_path)
    alb.start_stub()
    alb.start()
    work = tmp_path / "pki"
    work.mkdir()
    (work / "hello.hvt").write_bytes(build_image(devices=()))
    procs: list[subprocess.Popen] = []
    yield alb, str(work), procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    alb.teardown()


def run(work: str, alb: Albatross, *args: str, code: int = 0) -> str:
    p = subprocess.run([os.path.join(BIN, "albatross-client"), *args], cwd=work, capture_output=True, text=True,
                       timeout=60, env=alb.env)
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def test_readme_delegation_walkthrough(setup):
    alb, work, procs = setup
    # 1. root CA and server key pair
    run(work, alb, "generate", "ca", "db")
    for f in ("ca.key", "cacert.pem", "server.key", "server.pem", "db"):
        assert os.path.exists(os.path.join(work, f))
    # 2. the endpoint
    port = free_port()
    log = open(os.path.join(work, "endpoint.log"), "w")
    ep = subprocess.Popen([os.path.join(BIN, "albatross-tls-endpoint"), "cacert.pem", "server.pem", "server.key",
                           "--ip", "127.0.0.1", "--port", str(port), "--tmpdir", alb.tmpdir, "-v"],
                          cwd=work, stdout=log, stderr=subprocess.STDOUT)
    procs.append(ep)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and ep.poll() is None, "endpoint did not start"
            time.sleep(0.05)
    dest = f"127.0.0.1:{port}"
    # 3. the user asks for a delegation; 4. the CA signs it into an intermediate CA
    run(work, alb, "add-policy", "user", "16", "--mem", "1024", "--cpu", "0", "--cpu", "1", "--csr")
    assert os.path.exists(os.path.join(work, "user.req")) and os.path.exists(os.path.join(work, "user.key"))
    run(work, alb, "sign", "cacert.pem", "db", "ca.key", "user.req")
    # 5. the client wraps a create into a CSR (the stand-in tender runs until killed
    # with the argument "forever"); 6. the intermediate CA signs it
    run(work, alb, "create", "hello", "hello.hvt", "--csr", "--arg=forever", "--cpu=1")
    run(work, alb, "sign", "user.pem", "db", "user.key", "hello.req")
    # 7. the client sends the signed request (upstream's CLI: certificate CERT KEY)
    out = run(work, alb, "certificate", "hello.pem", "hello.key", "--destination", dest)
    assert "created unikernel" in out
    [w] = alb.request(":", m.UnikernelInfoCmd())
    assert [n for n, _ in w.payload.unikernels] == [Name(("user",), "hello")]
    [(_, info)] = w.payload.unikernels
    assert info.cpuids == frozenset({1}) and info.argv == ("forever",)
    [w] = alb.request("user:", m.PolicyInfoCmd())
    assert [(n.to_string(), p.unikernels, p.memory) for n, p in w.payload.policies] == [(":", 16, 1024)]
    # 8. steps 5-7 in one go with the user's CA key
    one_shot = ["--ca=user.pem", "--ca-key=user.key", "--server-ca=cacert.pem", "--destination", dest]
    out = run(work, alb, "create", "hello2", "hello.hvt", "--arg=forever", "--cpu=1", *one_shot)
    assert "created unikernel" in out
    out = run(work, alb, "info", *one_shot)
    assert "[unikernel: :hello]:" in out and "[unikernel: :hello2]:" in out  # names relative to user:
    # the delegation is enforced: statically by the client and dynamically by albatrossd
    out = run(work, alb, "create", "big", "hello.hvt", "--mem", "2048", *one_shot, code=124)
    assert "exceeds policy" in out
    out = run(work, alb, "create", "two", "hello.hvt", "--cpu=2", *one_shot, code=124)
    assert "not allowed by policy" in out
    # names are confined to the certificate's path
    run(work, alb, "destroy", "hello2", *one_shot)
    [w] = alb.request(":", m.UnikernelInfoCmd())
    assert [n.to_string() for n, _ in w.payload.unikernels] == ["user:hello"]
    run(work, alb, "destroy", "other:hello", *one_shot, code=124)  # "non-empty path"
    run(work, alb, "destroy", "hello", *one_shot)
    [w] = alb.request(":", m.UnikernelInfoCmd())
    assert w.payload.unikernels == ()
