"""Packaging: systemd units, FreeBSD rc.d scripts and packaging/install.sh.

* the units pass ``systemd-analyze verify`` once their programs point at
  this checkout's console scripts, and say what spec §9.1 asks for;
* every daemon started the way its unit starts it, through
  ``systemd-socket-activate`` on the unit's socket (moved into a temporary
  runtime directory), answers a real ``albatross-client`` command and tells
  systemd it is ready (Type=notify);
* the rc.d scripts are valid POSIX sh, and run against a stand-in rc.subr
  they start the right program through daemon(8) with the right flags;
* install.sh lays out a staging root (DESTDIR) as documented.

FreeBSD itself is not available here: the rc.d scripts are only checked
statically and against the stand-in rc.subr.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "packaging"
UNITS = PKG / "systemd"
RCD = PKG / "rc.d"
INSTALL = PKG / "install.sh"
BIN = Path(sys.executable).parent  # the venv's console scripts
TENDER_BIN = REPO / "tests" / "tender" / "bin"
LIBEXEC = "/usr/libexec/albatross/"

SOCKETS = ["albatross_console.socket", "albatross_daemon.socket", "albatross_stats.socket",
           "albatross_tls_endpoint.socket"]
SERVICES = ["albatross_console.service", "albatross_daemon.service", "albatross_stats.service",
            "albatross_influx.service", "albatross_tls_endpoint.service"]
RC_SCRIPTS = ["albatross_console", "albatross_daemon", "albatross_stats", "albatross_influx", "albatross_tls"]


# ------------------------------------------------------------------ helpers

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} given {len(values)} times"
    return values[0]


def words(unit: dict, section: str, key: str) -> list[str]:
    return [w for v in unit.get(section, {}).get(key, []) for w in v.split()]


def environment(unit: dict) -> dict[str, str]:
    env = {}
    for v in unit["Service"].get("Environment", []):
        for assignment in shlex.split(v):
            k, _, val = assignment.partition("=")
            env[k] = val
    return env


def render_unit(text: str, bindir: Path) -> str:
    """The unit with its programs taken from ``bindir`` instead of /usr/libexec/albatross."""
    return text.replace(LIBEXEC, f"{bindir}/")


def expand(line: str, runtime: Path, env: dict[str, str]) -> list[str]:
    """A unit's command line as argv: %t is ``runtime``, ${VAR} from ``env``,
    programs from this checkout."""
    line = render_unit(line, BIN).replace("%t", str(runtime))
    argv = shlex.split(line)
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in argv]


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def have_client_command(cmd: str) -> bool:
    out = subprocess.run([str(BIN / "albatross-client"), "--help"], capture_output=True, text=True)
    return re.search(rf"^\s+{re.escape(cmd)}\s", out.stdout, re.M) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------- unit files

def test_unit_files_present():
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(SOCKETS + SERVICES)


def test_render_unit_substitutes_programs():
    text = (UNITS / "albatross_daemon.service").read_text()
    rendered = render_unit(text, BIN)
    assert LIBEXEC not in rendered
    assert f"ExecStart={BIN}/albatrossd " in rendered


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    for name in SOCKETS + SERVICES:
        (tmp_path / name).write_text(render_unit((UNITS / name).read_text(), BIN))
    for name in SERVICES:
        unit = parse_unit(tmp_path / name)
        for key in ("ExecStart", "ExecStartPre"):
            for line in unit["Service"].get(key, []):
                prog = shlex.split(line)[0].lstrip("-+!@:")
                assert os.access(prog, os.X_OK), f"{name}: {prog} is not executable"
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(tmp_path.iterdir())],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # unknown keys, bad values and missing programs are reported on stderr
    assert res.stderr.strip() == "", res.stderr


def test_unit_users_and_groups_exist():
    names = set()
    for name in SOCKETS + SERVICES:
        unit = parse_unit(UNITS / name)
        for section, keys in (("Service", ("User", "Group")), ("Socket", ("SocketUser", "SocketGroup"))):
            for key in keys:
                names |= {(key, v) for v in unit.get(section, {}).get(key, [])}
    assert names == {("User", "albatross"), ("User", "root"), ("Group", "albatross"),
                     ("SocketUser", "albatross"), ("SocketGroup", "albatross")}
    if not (user_exists("albatross") and group_exists("albatross")):
        pytest.skip("user/group albatross not present on this host "
                    "(packaging/install.sh creates them when run as root)")
    assert grp.getgrgid(pwd.getpwnam("albatross").pw_gid).gr_name == "albatross"


@pytest.mark.parametrize("name,path,owner", [
    ("albatross_console.socket", "%t/albatross/util/console.sock", ("SocketUser", "albatross")),
    ("albatross_daemon.socket", "%t/albatross/util/vmmd.sock", ("SocketGroup", "albatross")),
    ("albatross_stats.socket", "%t/albatross/util/stat.sock", ("SocketUser", "albatross")),
])
def test_unix_socket_units(name, path, owner):
    unit = parse_unit(UNITS / name)
    assert one(unit, "Socket", "ListenStream") == path
    assert one(unit, "Socket", owner[0]) == owner[1]
    assert one(unit, "Socket", "SocketMode") == "0660"
    assert unit["Socket"].get("Accept", ["no"]) == ["no"]
    assert one(unit, "Unit", "PartOf") == name.replace(".socket", ".service")
    assert one(unit, "Install", "WantedBy") == "sockets.target"


def test_tls_socket_unit():
    unit = parse_unit(UNITS / "albatross_tls_endpoint.socket")
    assert one(unit, "Socket", "ListenStream") == "1025"
    assert one(unit, "Socket", "SocketUser") == "albatross"
    assert unit["Socket"].get("Accept", ["no"]) == ["no"]
    assert one(unit, "Install", "WantedBy") == "sockets.target"


SERVICE_SPEC = {
    # program, user, requires, ordered after, socket (Also=), restricted address families
    "albatross_console.service": ("albatross-console", "albatross", {"albatross_console.socket"},
                                  set(), "albatross_console.socket", {"AF_UNIX"}),
    "albatross_daemon.service": ("albatrossd", "root", {"albatross_console.socket", "albatross_daemon.socket"},
                                 {"albatross_console.service", "network.target",
                                  "NetworkManager-wait-online.service"},
                                 "albatross_daemon.socket", None),
    "albatross_stats.service": ("albatross-stats", "albatross", {"albatross_daemon.socket",
                                                                 "albatross_stats.socket"},
                                {"albatross_daemon.service"}, "albatross_stats.socket",
                                {"AF_UNIX", "AF_NETLINK"}),
    "albatross_influx.service": ("albatross-influx", "albatross", {"albatross_stats.socket"},
                                 {"albatross_stats.service"}, None, None),
    "albatross_tls_endpoint.service": ("albatross-tls-endpoint", "albatross",
                                       {"albatross_daemon.socket", "albatross_tls_endpoint.socket"},
                                       {"network.target"}, "albatross_tls_endpoint.socket", None),
}


@pytest.mark.parametrize("name", SERVICES)
def test_service_units(name):
    program, user, requires, after, also, families = SERVICE_SPEC[name]
    unit = parse_unit(UNITS / name)
    assert one(unit, "Service", "User") == user
    assert one(unit, "Service", "Group") == "albatross"
    assert set(words(unit, "Unit", "Requires")) == requires
    assert after <= set(words(unit, "Unit", "After"))
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0] == LIBEXEC + program
    assert "--tmpdir=%t/albatross/" in argv
    # logging goes to stdout, which systemd hands to the journal
    assert "--syslog" not in argv
    if also:
        assert "--systemd-socket-activation" in argv
        assert one(unit, "Install", "Also") == also
    else:
        assert "--systemd-socket-activation" not in argv
    # the daemons send READY=1 once they serve their socket
    expected_type = "exec" if name == "albatross_influx.service" else "notify"
    assert one(unit, "Service", "Type") == expected_type
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    if families is None:
        assert "RestrictAddressFamilies" not in unit["Service"]
    else:
        assert set(words(unit, "Service", "RestrictAddressFamilies")) == families
    assert one(unit, "Service", "ProtectSystem") == "full"
    assert one(unit, "Service", "ProtectHome") in ("yes", "true")


def test_daemon_service_runtime_directories_and_hardening():
    unit = parse_unit(UNITS / "albatross_daemon.service")
    svc = unit["Service"]
    assert one(unit, "Service", "RuntimeDirectory") == "albatross"
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert one(unit, "Service", "OOMScoreAdjust") == "-1000"
    assert one(unit, "Service", "IgnoreSIGPIPE") in ("yes", "true")
    pre = [shlex.split(line) for line in svc["ExecStartPre"]]
    # fifo/ is writable by root alone (the group only reads the fifos)
    assert ["/usr/bin/install", "-d", "-m", "2750", "-o", "root", "-g", "albatross",
            "%t/albatross/fifo"] in pre
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert int(one(unit, "Service", "LimitNOFILE")) >= 4096
    assert any(a[-1] == "%t/albatross/util" for a in pre)


def test_influx_and_tls_settings_from_environment():
    influx = parse_unit(UNITS / "albatross_influx.service")
    assert environment(influx)["INFLUX"] == "127.0.0.1"
    assert "--influx=${INFLUX}" in shlex.split(one(influx, "Service", "ExecStart"))
    tls = parse_unit(UNITS / "albatross_tls_endpoint.service")
    env = environment(tls)
    assert set(env) >= {"CA", "CERT", "KEY"}
    assert shlex.split(one(tls, "Service", "ExecStart"))[-3:] == ["${CA}", "${CERT}", "${KEY}"]


# ------------------------------------------------ socket-activated daemons

class Activated:
    """A daemon started through systemd-socket-activate the way its unit
    starts it, in a temporary runtime directory (%t)."""

    def __init__(self, runtime: Path, service: str, listen: str | None = None, *, extra=(),
                 env: dict[str, str] | None = None, activate_args=(), argv: list[str] | None = None):
        self.name = service
        unit = parse_unit(UNITS / service)
        uenv = {**environment(unit), **(env or {})}
        if argv is None:
            argv = expand(one(unit, "Service", "ExecStart"), runtime, uenv) + list(extra)
        if listen is None:
            sock_unit = parse_unit(UNITS / service.replace(".service", ".socket"))
            listen = one(sock_unit, "Socket", "ListenStream").replace("%t", str(runtime))
        self.listen = listen
        self.notify_path = runtime / f"notify-{service}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        uenv = {**uenv, "NOTIFY_SOCKET": str(self.notify_path),
                "PATH": f"{TENDER_BIN}:{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        cmd = ["systemd-socket-activate", *activate_args, "-l", listen]
        for k, v in uenv.items():
            cmd += ["-E", f"{k}={v}"]
        self.log_path = runtime / f"{service}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd + argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        # systemd-socket-activate binds first and starts the daemon on the
        # first connection, as systemd does
        deadline = time.monotonic() + 10
        while "Listening on" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{service}: no listening socket: {self.log()}"
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self, timeout: float = 10.0) -> bool:
        """True once the daemon sent READY=1 on $NOTIFY_SOCKET."""
        self.notify.settimeout(timeout)
        try:
            while True:
                msg = self.notify.recv(4096).decode()
                if "READY=1" in msg.split("\n"):
                    return True
        except TimeoutError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()


def client(*args: str, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "albatross-client"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def require_program(module: str) -> None:
    """The activation tests run against the real daemons; while a daemon
    module does not exist yet the test fails (it is not skipped)."""
    path = REPO / "src" / "albatross" / "daemons" / f"{module}.py"
    assert path.exists(), f"{path} does not exist yet"


@pytest.fixture
def runtime(tmp_path):
    """%t of the units: the daemons' tmpdir is runtime/albatross/. What the
    socket units and RuntimeDirectory= create is created here."""
    run = tmp_path / "run"
    (run / "albatross" / "util").mkdir(parents=True)
    started: list[Activated] = []
    yield run, started
    for a in reversed(started):
        a.stop()


def run_exec_start_pre(service: str, runtime: Path) -> None:
    """Run the unit's ExecStartPre= lines; without a group albatross on this
    host the directories get the current group instead."""
    unit = parse_unit(UNITS / service)
    for line in unit["Service"].get("ExecStartPre", []):
        argv = expand(line, runtime, {})
        if not group_exists("albatross"):
            argv = [grp.getgrgid(os.getgid()).gr_name if a == "albatross" and argv[i - 1] == "-g" else a
                    for i, a in enumerate(argv)]
        subprocess.run(argv, check=True)


def start_console(runtime, started) -> Activated:
    console = Activated(runtime, "albatross_console.service", extra=["-v"])
    started.append(console)
    return console


def start_albatrossd(runtime, started, tmp_path) -> Activated:
    dbdir = tmp_path / "db"
    (dbdir / "block").mkdir(parents=True, exist_ok=True)
    run_exec_start_pre("albatross_daemon.service", runtime)
    daemon = Activated(runtime, "albatross_daemon.service", extra=[f"--dbdir={dbdir}", "-v"])
    started.append(daemon)
    return daemon


def test_daemon_exec_start_pre_creates_runtime_directories(runtime):
    run, _ = runtime
    run_exec_start_pre("albatross_daemon.service", run)
    fifo = os.stat(run / "albatross" / "fifo")
    assert stat.S_ISDIR(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o2750
    if group_exists("albatross"):
        assert fifo.st_gid == grp.getgrnam("albatross").gr_gid
    assert (run / "albatross" / "util").is_dir()


def test_console_socket_activation(runtime):
    require_program("console")
    run, started = runtime
    console = start_console(run, started)
    res = client("inactive-consoles", f"--socket={console.listen}")
    assert res.returncode == 0, res.stdout + res.stderr + console.log()
    assert console.ready(), console.log()


def test_albatrossd_socket_activation(runtime, tmp_path):
    require_program("console")
    require_program("albatrossd")
    run, started = runtime
    console = start_console(run, started)
    daemon = start_albatrossd(run, started, tmp_path)
    res = client("info", f"--socket={daemon.listen}")
    assert res.returncode == 0, res.stdout + res.stderr + daemon.log()
    assert "no unikernels" in res.stdout, res.stdout
    assert daemon.ready(), daemon.log()
    # albatrossd connected to the console socket, which started albatross-console
    assert console.ready(), console.log()


def test_stats_socket_activation(runtime, tmp_path):
    for m in ("console", "albatrossd", "stats"):
        require_program(m)
    run, started = runtime
    start_console(run, started)
    start_albatrossd(run, started, tmp_path)
    stats = Activated(run, "albatross_stats.service", extra=["-v"])
    started.append(stats)
    res = client("stats-remove", "-n", "nothing", f"--socket={stats.listen}")
    # a reply (success or failure) proves the daemon served the request
    assert res.returncode in (0, 117), res.stdout + res.stderr + stats.log()
    assert "host" in res.stdout, res.stdout
    assert stats.ready(), stats.log()


def test_influx_service_runs_against_stats(runtime, tmp_path):
    for m in ("console", "albatrossd", "stats", "influx"):
        require_program(m)
    run, started = runtime
    start_console(run, started)
    start_albatrossd(run, started, tmp_path)
    stats = Activated(run, "albatross_stats.service", extra=["-v"])
    started.append(stats)
    # a line-protocol listener standing in for Telegraf
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(4)
        unit = parse_unit(UNITS / "albatross_influx.service")
        env = {**environment(unit), "INFLUX": f"127.0.0.1:{sink.getsockname()[1]}"}
        argv = expand(one(unit, "Service", "ExecStart"), run, env) + ["-v"]
        log_path = run / "influx.log"
        with open(log_path, "wb") as log:
            influx = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            # albatross-influx subscribes at albatross-stats (starting it),
            # then connects to the line-protocol listener named by INFLUX
            assert stats.ready(), stats.log()
            sink.settimeout(10)
            try:
                conn, _ = sink.accept()
            except TimeoutError:
                pytest.fail("albatross-influx did not connect to INFLUX: " + log_path.read_text())
            conn.close()
            assert influx.poll() is None, log_path.read_text()
        finally:
            influx.terminate()
            influx.wait(10)


def _pki(tmp_path) -> Path:
    if not have_client_command("generate"):
        pytest.fail("albatross-client generate does not exist yet (PKI not landed)")
    pki = tmp_path / "pki"
    pki.mkdir()
    res = client("generate", "admin", "db", cwd=pki)
    assert res.returncode == 0, res.stdout + res.stderr
    for f in ("cacert.pem", "server.pem", "server.key", "admin.key"):
        assert (pki / f).exists(), f
    return pki


def _remote_info(pki: Path, port: int) -> subprocess.CompletedProcess:
    return client("info", f"--destination=127.0.0.1:{port}", "--ca=cacert.pem", "--ca-key=admin.key",
                  "--server-ca=cacert.pem", cwd=pki)


def test_tls_endpoint_socket_activation(runtime, tmp_path):
    for m in ("console", "albatrossd", "tls_endpoint"):
        require_program(m)
    pki = _pki(tmp_path)
    run, started = runtime
    start_console(run, started)
    start_albatrossd(run, started, tmp_path)
    port = free_port()
    # the unit's ListenStream=1025, moved to a free port on the loopback
    tls = Activated(run, "albatross_tls_endpoint.service", listen=f"127.0.0.1:{port}", extra=["-v"],
                    env={"CA": str(pki / "cacert.pem"), "CERT": str(pki / "server.pem"),
                         "KEY": str(pki / "server.key")})
    started.append(tls)
    res = _remote_info(pki, port)
    assert res.returncode == 0, res.stdout + res.stderr + tls.log()
    assert "no unikernels" in res.stdout, res.stdout
    assert tls.ready(), tls.log()


def test_tls_endpoint_inetd(runtime, tmp_path):
    for m in ("console", "albatrossd", "tls_endpoint"):
        require_program(m)
    pki = _pki(tmp_path)
    run, started = runtime
    start_console(run, started)
    start_albatrossd(run, started, tmp_path)
    port = free_port()
    # what inetd does: one endpoint per connection, the connection on stdin
    argv = [str(BIN / "albatross-tls-endpoint"), "--inetd", "-q", f"--tmpdir={run}/albatross/",
            str(pki / "cacert.pem"), str(pki / "server.pem"), str(pki / "server.key")]
    tls = Activated(run, "albatross_tls_endpoint.service", listen=f"127.0.0.1:{port}",
                    activate_args=["--accept", "--inetd"], argv=argv)
    started.append(tls)
    res = _remote_info(pki, port)
    assert res.returncode == 0, res.stdout + res.stderr + tls.log()
    assert "no unikernels" in res.stdout, res.stdout


# ---------------------------------------------------------------- rc.d

RC_SPEC = {
    # program, REQUIRE, runs as albatross
    "albatross_console": ("albatross-console", ["LOGIN"], True),
    "albatross_daemon": ("albatrossd", ["LOGIN", "albatross_console"], False),
    "albatross_stats": ("albatross-stats", ["LOGIN", "albatross_daemon"], True),
    "albatross_influx": ("albatross-influx", ["LOGIN", "albatross_stats"], True),
    "albatross_tls": ("albatross-tls-endpoint", ["LOGIN", "albatross_daemon"], True),
}


def test_rc_scripts_present():
    assert sorted(p.name for p in RCD.iterdir()) == sorted(RC_SCRIPTS)


@pytest.mark.parametrize("name", RC_SCRIPTS)
@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_rc_script_syntax(name, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    res = subprocess.run([shell, "-n", str(RCD / name)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(RCD / name, os.X_OK)


@pytest.mark.parametrize("name", RC_SCRIPTS)
def test_rc_script_contents(name):
    program, require, as_user = RC_SPEC[name]
    text = (RCD / name).read_text()
    assert text.startswith("#!/bin/sh\n")
    header = dict(re.findall(r"^# (PROVIDE|REQUIRE|KEYWORD): *(.*)$", text, re.M))
    assert header == {"PROVIDE": name, "REQUIRE": " ".join(require), "KEYWORD": "shutdown"}
    assert re.search(r"^\. /etc/rc\.subr$", text, re.M)
    assert re.search(rf"^name={name}$", text, re.M)
    assert re.search(rf"^rcvar={name}_enable$", text, re.M)
    assert f': ${{{name}_enable:="NO"}}' in text
    assert f': ${{{name}_flags:=""}}' in text
    assert (f': ${{{name}_user:="albatross"}}' in text) == as_user
    assert re.search(rf"^program=/usr/local/libexec/albatross/{re.escape(program)}$", text, re.M)
    assert re.search(r"^pidfile=/var/run/\$\{name\}\.pid$", text, re.M)
    assert "/usr/sbin/daemon -S -r -P" in text
    assert re.search(r'^run_rc_command "\$1"$', text, re.M)


def _run_rc(tmp_path: Path, name: str, env: dict[str, str], action: str = "start"):
    """Run an rc.d script against a stand-in rc.subr in which daemon(8),
    install(1) and the other rc.d scripts only record how they were called."""
    stub = tmp_path / "stub"
    (stub / "rc.d").mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls"
    (stub / "rc.subr").write_text(r"""
load_rc_config() { :; }
info() { echo "info: $*"; }
warn() { echo "warn: $*"; }
err() { _c=$1; shift; echo "err: $*"; exit $_c; }
run_rc_command() {
	case $1 in
	start)
		if [ -n "${start_precmd:-}" ]; then $start_precmd || return 1; fi
		$start_cmd ;;
	vars)
		eval "echo enable=\${$rcvar}"
		eval "echo flags=\${${name}_flags}"
		eval "echo user=\${${name}_user:-UNSET}"
		echo "procname=$procname pidfile=$pidfile precmd=${start_precmd:-}" ;;
	esac
}
""")
    recorder = f'#!/bin/sh\n{{ printf "%s" "$(basename "$0")"; for a; do printf " [%s]" "$a"; done; echo; }} >> {calls}\n'
    (stub / "daemon").write_text(recorder + f'echo "PATH=$PATH" >> {calls}\n')
    (stub / "install").write_text(recorder)
    for dep in RC_SCRIPTS:
        # dependencies are not running: onestatus fails, onestart is recorded
        (stub / "rc.d" / dep).write_text(recorder + '[ "$1" != onestatus ]\n')
    for p in [stub / "daemon", stub / "install", *(stub / "rc.d").iterdir()]:
        p.chmod(0o755)
    text = (RCD / name).read_text()
    text = (text.replace(". /etc/rc.subr", f". {stub}/rc.subr")
                .replace("/usr/sbin/daemon -S", f"{stub}/daemon -S")
                .replace("/usr/local/etc/rc.d/", f"{stub}/rc.d/"))
    script = tmp_path / name
    script.write_text(text)
    if calls.exists():
        calls.unlink()
    res = subprocess.run(["sh", str(script), action], capture_output=True, text=True,
                         env={"PATH": f"{stub}:/usr/bin:/bin", **env})
    recorded = calls.read_text().splitlines() if calls.exists() else []
    return res, recorded


@pytest.mark.parametrize("name", RC_SCRIPTS)
def test_rc_script_defaults(tmp_path, name):
    program, require, as_user = RC_SPEC[name]
    res, _ = _run_rc(tmp_path, name, {}, "vars")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "enable=NO" in lines and "flags=" in lines
    assert f"user={'albatross' if as_user else 'UNSET'}" in lines
    assert f"procname=/usr/sbin/daemon pidfile=/var/run/{name}.pid" in res.stdout


@pytest.mark.parametrize("name", RC_SCRIPTS)
def test_rc_script_start(tmp_path, name):
    program, require, as_user = RC_SPEC[name]
    flags = "--tmpdir=/var/run/albatross/ -v"
    res, calls = _run_rc(tmp_path, name, {f"{name}_flags": flags, f"{name}_user": "someone"})
    assert res.returncode == 0, res.stdout + res.stderr
    daemon_calls = [c for c in calls if c.startswith("daemon ")]
    user = ["[-u]", "[someone]"] if as_user else []
    assert daemon_calls == [" ".join(["daemon", "[-S]", "[-r]", "[-P]", f"[/var/run/{name}.pid]", *user,
                                      f"[/usr/local/libexec/albatross/{program}]",
                                      "[--tmpdir=/var/run/albatross/]", "[-v]"])]
    # the service it needs is started first (upstream's stats script never
    # wired its precmd; ours does)
    deps = [r for r in require if r != "LOGIN"]
    assert [c for c in calls if c.startswith("albatross_")] == \
        [f"{d} [onestatus]" for d in deps] + [f"{d} [onestart]" for d in deps]
    path_line = next(c for c in calls if c.startswith("PATH="))
    if name == "albatross_daemon":
        assert path_line.endswith(":/usr/local/sbin:/usr/local/bin")
    else:
        assert "/usr/local/sbin" not in path_line
    if name == "albatross_console":
        # the runtime directories below /var/run, which is cleaned at boot
        installs = [c for c in calls if c.startswith("install ")]
        assert any("[/var/run/albatross/util]" in c for c in installs)
        assert any("[2750]" in c and "[root]" in c and "[/var/run/albatross/fifo]" in c for c in installs)
        assert any("[1770]" in c and "[root]" in c and "[/var/run/albatross/util]" in c for c in installs)


# ------------------------------------------------------------- install.sh

def _install(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_install_sh_syntax():
    assert subprocess.run(["sh", "-n", str(INSTALL)]).returncode == 0
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", str(INSTALL)]).returncode == 0


def test_install_destdir_layout(tmp_path):
    root = tmp_path / "root"
    res = _install("--destdir", str(root), "--no-venv", "--os", "linux")
    assert res.returncode == 0, res.stdout + res.stderr
    libexec = root / "usr/libexec/albatross"
    assert sorted(os.listdir(libexec)) == sorted(["albatrossd", "albatross-console", "albatross-stats",
                                                  "albatross-influx", "albatross-tls-endpoint"])
    for d in os.listdir(libexec):
        assert os.readlink(libexec / d) == f"/opt/albatross/bin/{d}"
    assert os.readlink(root / "usr/bin/albatross-client") == "/opt/albatross/bin/albatross-client"
    block = root / "var/lib/albatross/block"
    assert stat.S_IMODE(block.stat().st_mode) == 0o700
    units = root / "etc/systemd/system"
    assert sorted(os.listdir(units)) == sorted(SOCKETS + SERVICES)
    for u in units.iterdir():
        assert stat.S_IMODE(u.stat().st_mode) == 0o644
        assert u.read_text() == (UNITS / u.name).read_text()
    # a staging root gets no users, chown or daemon-reload
    assert "useradd" not in res.stdout and "chown" not in res.stdout
    assert "daemon-reload" not in res.stdout


def test_install_unitdir_and_prefix(tmp_path):
    root = tmp_path / "root"
    res = _install(f"--destdir={root}", "--no-venv", "--prefix=/srv/alb", "--unitdir=/usr/lib/systemd/system",
                   "--os=linux")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(os.listdir(root / "usr/lib/systemd/system")) == sorted(SOCKETS + SERVICES)
    assert os.readlink(root / "usr/libexec/albatross/albatrossd") == "/srv/alb/bin/albatrossd"


def test_install_freebsd_layout(tmp_path):
    root = tmp_path / "root"
    res = _install("--destdir", str(root), "--no-venv", "--os", "freebsd")
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.readlink(root / "usr/local/libexec/albatross/albatrossd") == "/usr/local/albatross/bin/albatrossd"
    assert os.readlink(root / "usr/local/sbin/albatross-client") == "/usr/local/albatross/bin/albatross-client"
    rc = root / "usr/local/etc/rc.d"
    assert sorted(os.listdir(rc)) == sorted(RC_SCRIPTS)
    for r in rc.iterdir():
        assert stat.S_IMODE(r.stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "var/db/albatross/block").stat().st_mode) == 0o700
    assert (root / "var/run/albatross/util").is_dir() and (root / "var/run/albatross/fifo").is_dir()
    assert not (root / "etc/systemd").exists()
    assert "add path 'vmm/*' mode 0660 group albatross" in res.stdout


def test_install_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    res = _install("--dry-run", "--destdir", str(root), "--os", "linux")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not root.exists()
    assert f"+ python3 -m venv {root}/opt/albatross" in res.stdout
    assert f"ln -sfn /opt/albatross/bin/albatrossd {root}/usr/libexec/albatross/albatrossd" in res.stdout


def test_install_dry_run_live_system_creates_user():
    res = _install("--dry-run", "--no-venv", "--os", "linux")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    if not group_exists("albatross"):
        gid_free = True
        try:
            grp.getgrgid(496)
            gid_free = False
        except KeyError:
            pass
        assert f"+ groupadd --system {'-g 496 ' if gid_free else ''}albatross" in lines
    if not user_exists("albatross"):
        assert any(line.startswith("+ useradd --system") and line.endswith(
            "-g albatross -M -d /nonexistent -s /usr/sbin/nologin albatross") for line in lines)
    assert "+ chmod 0700 /var/lib/albatross /var/lib/albatross/block" in lines
    assert "+ chown root:0 /var/lib/albatross /var/lib/albatross/block" in lines
    assert not any(line.startswith("+ chown albatross") for line in lines)
    assert ("+ systemctl daemon-reload" in lines) == os.path.isdir("/run/systemd/system")


def test_install_into_fresh_venv(tmp_path):
    """The whole thing, pip included, into a staging root (dependencies are
    not installed, to keep it quick: PIP_NO_DEPS)."""
    root = tmp_path / "root"
    res = _install("--destdir", str(root), "--os", "linux", env={"PIP_NO_DEPS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    venv_bin = root / "opt/albatross/bin"
    for prog in ("albatrossd", "albatross-console", "albatross-stats", "albatross-influx",
                 "albatross-tls-endpoint", "albatross-client"):
        assert os.access(venv_bin / prog, os.X_OK), prog
    assert os.readlink(root / "usr/libexec/albatross/albatrossd") == "/opt/albatross/bin/albatrossd"


def _files_mentioning(root: Path, needle: str) -> list[str]:
    """Files (and symlinks) below root whose content or target contains needle."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                if needle in os.readlink(p):
                    found.append(p)
            elif needle.encode() in Path(p).read_bytes():
                found.append(p)
    return found


def test_install_destdir_is_relocatable(tmp_path):
    """A venv staged with --destdir names only its final place (shebangs,
    pyvenv.cfg, activate scripts, compiled files), and runs once moved there."""
    stage, final = tmp_path / "stage", tmp_path / "final"
    res = _install("--destdir", str(stage), "--prefix", str(final), "--os", "linux", env={"PIP_NO_DEPS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    staged = stage / str(final).lstrip("/")
    assert (staged / "pyvenv.cfg").exists()
    assert _files_mentioning(stage, str(stage)) == []
    scripts = ["albatrossd", "albatross-console", "albatross-stats", "albatross-influx",
               "albatross-tls-endpoint", "albatross-client"]
    for prog in scripts:
        head = (staged / "bin" / prog).read_text().splitlines()[:2]
        # pip writes a /bin/sh trampoline when the interpreter's path is long
        tramp = re.match("'''exec' \"?([^\" ]+)", head[1])
        interp = tramp.group(1) if head[0] == "#!/bin/sh" and tramp else head[0][2:]
        assert re.fullmatch(rf"{re.escape(str(final))}/bin/python3?(\.\d+)?", interp), head
    assert os.readlink(stage / "usr/libexec/albatross/albatrossd") == f"{final}/bin/albatrossd"
    staged.rename(final)
    out = subprocess.run([str(final / "bin" / "python"), "-c",
                          "import sys, albatross; print(sys.prefix); print(albatross.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(final)
    assert out[1].startswith(f"{final}/lib/")


def _man_text(path: Path) -> str:
    import gzip
    return gzip.decompress(path.read_bytes()).decode().replace("\\-", "-")


def test_install_man_pages_and_completion(tmp_path):
    """Man pages for every program and client command, generated from the
    click definitions, and the bash completion script (here from this
    test's environment: --no-venv --prefix)."""
    import click

    from albatross.client import cli
    root = tmp_path / "root"
    res = _install("--destdir", str(root), "--no-venv", "--prefix", sys.prefix, "--os", "linux")
    assert res.returncode == 0, res.stdout + res.stderr
    man = root / "usr/share/man"
    commands = sorted(n for n, c in cli.commands.items() if not c.hidden)
    assert sorted(p.name for p in (man / "man1").iterdir()) == sorted(
        ["albatross-client.1.gz"] + [f"albatross-client-{c}.1.gz" for c in commands])
    daemons = {"albatrossd": "albatrossd", "albatross-console": "console", "albatross-stats": "stats",
               "albatross-influx": "influx", "albatross-tls-endpoint": "tls_endpoint"}
    assert sorted(p.name for p in (man / "man8").iterdir()) == sorted(f"{d}.8.gz" for d in daemons)
    pages = {f"albatross-client-{c}.1.gz": cli.commands[c] for c in commands}
    for prog, module in daemons.items():
        pages[f"{prog}.8.gz"] = __import__(f"albatross.daemons.{module}", fromlist=["command"]).command
    for name, command in pages.items():
        text = _man_text(man / f"man{name[-4]}" / name)
        assert text.startswith(f'.TH "{name[:-5].upper()}" "{name[-4]}" '), text[:80]
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert max(p.opts, key=len) in text, (name, p.opts)
    main_page = _man_text(man / "man1/albatross-client.1.gz")
    for c in commands:
        assert f"\\fB{c}\\fR" in main_page
    assert ".SH EXIT STATUS" in main_page and "\n124\n" in main_page
    comp = (root / "usr/share/bash-completion/completions/albatross-client").read_text()
    assert "_ALBATROSS_CLIENT_COMPLETE=bash_complete" in comp
    assert "complete -o nosort -F _albatross_client_completion albatross-client" in comp
    if shutil.which("man"):
        for page in (man / "man1/albatross-client-create.1.gz", man / "man8/albatrossd.8.gz"):
            r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                               env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""})
            assert r.returncode == 0 and r.stderr == "", r.stderr
            assert "OPTIONS" in r.stdout
