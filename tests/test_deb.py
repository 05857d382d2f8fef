"""The Debian package: packaging/debian/build.sh builds albatross_<version>_all.deb
from this checkout, and the package installed with ``dpkg --root`` into a
throwaway root works there:

* the throwaway root is an overlay of this machine's / (its dpkg database
  and Debian's python3-* libraries included) with a tmpfs on top, mounted in
  a private mount namespace: nothing of the installation reaches the machine
  (no user albatross, no files), and it is gone when the test ends;
* postinst creates the user and group albatross and /var/lib/albatross/block (root only);
* the installed units pass ``systemd-analyze verify`` against the installed
  programs; the man pages and the bash completion are where man and
  bash-completion look;
* ``albatross-client --version`` runs from the installed tree, on Debian's
  python3 and libraries;
* albatross-console and albatrossd started as their installed units start
  them (ExecStartPre=, ExecStart=, User=, Group=; systemd is not PID 1 here,
  so through ``systemd-socket-activate`` on the units' sockets) answer
  ``albatross-client`` with its default paths;
* ``dpkg -r`` removes it again.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "packaging" / "debian" / "build.sh"
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
DEB = f"albatross_{VERSION}_all.deb"
UNITDIR = "/usr/lib/systemd/system"
PROGRAMS = {"albatrossd", "albatross-console", "albatross-stats", "albatross-influx", "albatross-tls-endpoint"}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace, dpkg --root, chroot)"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (not Debian)"),
    pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None,
                       reason="unshare/nsenter (util-linux) not installed"),
]


def deb_depends(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True)
    return [d.split()[0] for d in out.stdout.strip().split(", ")]


def missing_packages(names: list[str]) -> list[str]:
    missing = []
    for n in names:
        res = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", n], capture_output=True, text=True)
        if res.stdout != "installed":
            missing.append(n)
    return missing


def host_user() -> str:
    """The user albatross of this machine (if any), to check the installation did not touch it."""
    return subprocess.run(["getent", "passwd", "albatross"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run([str(BUILD), "--outdir", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == str(out / DEB)
    return out / DEB


class Root:
    """An overlay of / in a private mount namespace: ``run`` executes in
    it, chrooted. The namespace lives as long as the holder process."""

    def __init__(self, base: Path):
        self.base = base
        self.mnt = base / "t" / "m"
        (base / "t").mkdir()
        t = base / "t"
        setup = f"""set -e
mount -t tmpfs tmpfs {t}
mkdir {t}/u {t}/w {t}/m
mount -t overlay overlay -o lowerdir=/,upperdir={t}/u,workdir={t}/w {t}/m
mount -t proc proc {t}/m/proc
mount --rbind /dev {t}/m/dev
mount -t tmpfs tmpfs {t}/m/run
mount -t tmpfs tmpfs {t}/m/tmp
echo ready
exec sleep infinity
"""
        self.holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", setup],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            self.holder.wait(10)
            pytest.skip(f"no overlay root in a mount namespace here: {self.holder.stderr.read().strip()}")
        self.started: list[subprocess.Popen] = []

    def argv(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "chroot", str(self.mnt), *cmd]

    def run(self, *cmd: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout, **kw)

    def ok(self, *cmd: str, **kw) -> str:
        res = self.run(*cmd, **kw)
        assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"
        return res.stdout

    def path(self, p: str) -> Path:
        """A path inside the root, as seen from outside the namespace."""
        return Path(f"/proc/{self.holder.pid}/root") / str(self.mnt).lstrip("/") / p.lstrip("/")

    def close(self) -> None:
        for p in reversed(self.started):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.holder.kill()
        self.holder.wait()


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory):
    missing = missing_packages(deb_depends(deb))
    if missing:
        pytest.skip(f"the package's dependencies are not installed on this machine: {' '.join(missing)} "
                    "(scripts/setup installs them as root)")
    if Path("/usr/lib/python3/dist-packages/albatross").exists():
        pytest.skip("albatross is installed on this machine itself: the throwaway root would not show "
                    "what the package installs")
    before = host_user()
    root = Root(tmp_path_factory.mktemp("root"))
    root.host_user = before
    try:
        shutil.copy(deb, root.path("/tmp"))
        res = subprocess.run(["nsenter", "-t", str(root.holder.pid), "-m",
                              "dpkg", f"--root={root.mnt}", "-i", f"{root.mnt}/tmp/{DEB}"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        yield root
    finally:
        root.close()


def test_package_fields_and_contents(deb):
    fields = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Package: albatross$", fields, re.M)
    assert re.search(rf"^Version: {re.escape(VERSION)}$", fields, re.M)
    assert re.search(r"^Architecture: all$", fields, re.M)
    deps = deb_depends(deb)
    for d in ("python3", "python3-cryptography", "python3-openssl", "python3-asn1crypto", "python3-psutil",
              "python3-click", "python3-pyroute2", "iproute2", "util-linux"):
        assert d in deps, fields
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1].lstrip(".") for line in files.splitlines()}
    owners = {line.split()[1] for line in files.splitlines()}
    assert owners == {"root/root"}
    assert {f"/usr/libexec/albatross/{p}" for p in PROGRAMS} | {"/usr/bin/albatross-client"} <= paths
    units = {p.name for p in (REPO / "packaging" / "systemd").iterdir()}
    assert {p.rsplit("/", 1)[1] for p in paths if p.startswith(UNITDIR + "/albatross_")} == units
    assert "/usr/share/man/man1/albatross-client.1.gz" in paths
    assert {f"/usr/share/man/man8/{p}.8.gz" for p in PROGRAMS} <= paths
    assert "/usr/share/bash-completion/completions/albatross-client" in paths
    assert f"/usr/lib/python3/dist-packages/albatross-{VERSION}.dist-info/METADATA" in paths
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]


def test_build_is_reproducible(deb, tmp_path):
    """Same checkout, same bytes (timestamps from SOURCE_DATE_EPOCH)."""
    env = {**os.environ, "PYTHON": sys.executable}
    epoch = "1700000000"
    outs = []
    for i in range(2):
        out = tmp_path / str(i)
        res = subprocess.run([str(BUILD), f"--outdir={out}"], capture_output=True, text=True, timeout=300,
                             env={**env, "SOURCE_DATE_EPOCH": epoch})
        assert res.returncode == 0, res.stderr
        outs.append((out / DEB).read_bytes())
    assert outs[0] == outs[1]


def test_postinst_creates_user_group_and_dbdir(installed):
    pw = installed.ok("getent", "passwd", "albatross").strip().split(":")
    gr = installed.ok("getent", "group", "albatross").strip().split(":")
    assert pw[3] == gr[2] and pw[6] == "/usr/sbin/nologin" and pw[5] == "/nonexistent"
    assert int(pw[2]) < 1000  # a system user
    out = installed.ok("stat", "-c", "%a %U %G", "/var/lib/albatross", "/var/lib/albatross/block").split("\n")
    # root's alone: the albatross user must not reach the state, block devices or tenders
    assert out[0] == "700 root root"
    assert out[1] == "700 root root"
    # nothing of it on this machine
    assert host_user() == installed.host_user
    assert not Path("/usr/libexec/albatross/albatrossd").exists()


def test_units_verify_against_installed_paths(installed):
    units = installed.ok("sh", "-c", f"ls {UNITDIR}/albatross_*").split()
    assert len(units) == len(list((REPO / "packaging" / "systemd").iterdir()))
    for u in units:
        text = installed.path(u).read_text()
        assert text == (REPO / "packaging" / "systemd" / Path(u).name).read_text()
        for prog in re.findall(r"^Exec\w+=[-+!@:]*(\S+)", text, re.M):
            installed.ok("test", "-x", prog)
    res = installed.run("systemd-analyze", "verify", "--man=no", *units)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_client_version_from_installed_tree(installed):
    out = installed.ok("albatross-client", "--version")
    assert out.strip() == f"version {VERSION} protocol version 5"
    assert installed.ok("head", "-1", "/usr/bin/albatross-client").strip() == "#!/usr/bin/python3"
    # it runs on Debian's libraries, not on this test's venv
    where = installed.ok("/usr/bin/python3", "-c", "import albatross, cryptography, click; "
                         "print(albatross.__file__, cryptography.__file__, click.__file__)").split()
    assert all(w.startswith("/usr/lib/python3/dist-packages/") for w in where), where
    for p in PROGRAMS:
        assert installed.ok(f"/usr/libexec/albatross/{p}", "--version").strip() == \
            f"version {VERSION} protocol version 5"


def test_man_pages_and_completion(installed):
    if installed.run("man", "--version").returncode != 0:
        pytest.skip("man (Debian package man-db) not installed")
    for page in ("albatross-client", "albatross-client-create", "albatrossd", "albatross-console"):
        installed.ok("man", "-w", page)
    text = installed.ok("man", "-P", "cat", "albatrossd", env={**os.environ, "MANWIDTH": "80"})
    assert "--dbdir" in text.replace("\u2010", "-")
    comp = installed.ok("bash", "-c", "source /usr/share/bash-completion/completions/albatross-client && "
                        "COMP_WORDS=(albatross-client inactive-con); COMP_CWORD=1; _albatross_client_completion albatross-client && "
                        "printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert "inactive-consoles" in comp.split(), comp


def unit_exec(root: Root, unit: str, key: str) -> list[list[str]]:
    """The unit's command lines: %t is /run, ${VAR} from its Environment=."""
    text = root.path(f"{UNITDIR}/{unit}").read_text()
    env = dict(a.split("=", 1) for v in re.findall(r"^Environment=(.*)$", text, re.M) for a in shlex.split(v))
    return [[re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in shlex.split(v.replace("%t", "/run"))]
            for v in re.findall(rf"^{key}=(.*)$", text, re.M)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit_value(root: Root, unit: str, key: str) -> str:
    return re.search(rf"^{key}=(.*)$", root.path(f"{UNITDIR}/{unit}").read_text(), re.M).group(1)


def activate(root: Root, service: str, tmp_path: Path, listen: str | None = None) -> subprocess.Popen:
    """Start ``service`` as its installed unit does (its socket, User=,
    Group=, ExecStart=) through systemd-socket-activate, in the root."""
    if listen is None:
        listen = unit_value(root, service.replace(".service", ".socket"), "ListenStream").replace("%t", "/run")
    (argv,) = unit_exec(root, service, "ExecStart")
    user, group = unit_value(root, service, "User"), unit_value(root, service, "Group")
    log = tmp_path / f"{service}.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(root.argv("systemd-socket-activate", "-l", listen, "-E", "PYTHONUNBUFFERED=1",
                                       "setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups",
                                       *argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    root.started.append(p)
    deadline = time.monotonic() + 30
    while "Listening on" not in log.read_text(errors="replace"):
        assert p.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{service}: no socket: {log.read_text()}"
        time.sleep(0.02)
    if listen.startswith("/"):
        # what systemd does with the socket unit's SocketUser=, SocketGroup=, SocketMode=
        sock = root.path(f"{UNITDIR}/{service.replace('.service', '.socket')}").read_text()
        owner = [re.search(rf"^Socket{k}=(.*)$", sock, re.M) for k in ("User", "Group")]
        mode = re.search(r"^SocketMode=(.*)$", sock, re.M)
        root.ok("chown", f"{owner[0].group(1) if owner[0] else 'root'}:{owner[1].group(1) if owner[1] else 'root'}",
                listen)
        root.ok("chmod", mode.group(1) if mode else "0666", listen)
    return p


def test_socket_activated_daemons_answer_the_client(installed, tmp_path):
    """albatross-console, albatrossd and albatross-tls-endpoint as installed,
    each answering albatross-client."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not installed (Debian package systemd)")
    root = installed
    # what the socket units and RuntimeDirectory= create: /run/albatross/util
    root.ok("install", "-d", "-m", "0755", "/run/albatross/util")
    activate(root, "albatross_console.service", tmp_path)
    res = root.run("albatross-client", "inactive-consoles", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + (tmp_path / "albatross_console.service.log").read_text()
    for argv in unit_exec(root, "albatross_daemon.service", "ExecStartPre"):
        root.ok(*argv)
    assert root.ok("stat", "-c", "%a %U %G", "/run/albatross/fifo").strip() == "2750 root albatross"
    activate(root, "albatross_daemon.service", tmp_path)
    res = root.run("albatross-client", "info", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + (tmp_path / "albatross_daemon.service.log").read_text()
    assert "no unikernels" in res.stdout, res.stdout
    log = (tmp_path / "albatross_daemon.service.log").read_text()
    assert "Traceback" not in log, log
    # remote access on Debian's python3-cryptography and python3-openssl: a CA
    # and server certificate from the installed client where the unit expects
    # them (readable by User=albatross), the endpoint on a loopback port
    # instead of the unit's 1025, and a remote info through it
    root.ok("sh", "-ec", "mkdir -p /root/pki && cd /root/pki && albatross-client generate admin db && "
            "install -d /etc/albatross && install -o albatross -g albatross -m 0400 cacert.pem server.pem "
            "server.key /etc/albatross/")
    port = free_port()
    activate(root, "albatross_tls_endpoint.service", tmp_path, listen=f"127.0.0.1:{port}")
    res = root.run("sh", "-c", f"cd /root/pki && albatross-client info --destination=127.0.0.1:{port} "
                   "--ca=cacert.pem --ca-key=admin.key --server-ca=cacert.pem", timeout=60)
    tls_log = (tmp_path / "albatross_tls_endpoint.service.log").read_text()
    assert res.returncode == 0, res.stdout + res.stderr + tls_log
    assert "no unikernels" in res.stdout, res.stdout


def test_remove(installed):
    installed.ok("dpkg", "-r", "albatross")
    assert installed.run("test", "-e", "/usr/bin/albatross-client").returncode != 0
    assert installed.run("test", "-e", "/usr/lib/python3/dist-packages/albatross").returncode != 0
    # the database directory stays (state file, block devices)
    installed.ok("test", "-d", "/var/lib/albatross/block")
