#!/usr/bin/env python3
"""A stand-in for the Solo5 tenders solo5-hvt / solo5-spt (tests only).

Invoked through the wrappers tests/tender/bin/solo5-hvt or solo5-spt (or
copies/symlinks of them); the tender flavour comes from the basename the
wrapper was invoked as (a ".N" suffix is ignored; anything else than
solo5-spt means hvt).  It
follows solo5.md §1, §2: the real command line, the real error messages (one
line on stderr, prefixed "solo5-hvt: ", exit 1), the device checks against the
image's manifest, taps (/sys/class/net, attached for real when possible) and
block files; then it prints a banner and runs the unikernel ARGS as a tiny
program of whitespace-separated commands:

    exit N        stop with status N & 0xff
    sleep S [N]   sleep S seconds (float); with N, stop with status N
    print WORD    print WORD on its own line
    forever       print "tick K" every 0.2 s until killed
    abort         "Solo5: solo5_abort() called", status 255
    fault         hvt: status 255; spt: killed by SIGSEGV
    spam N        print N numbered lines as fast as possible
    netsend N     send N broadcast Ethernet frames on every network device
    netrecv       from now on read (and drop) what arrives on every network
                  device, in the background, like a unikernel's net stack
    busy S        burn CPU for S seconds (float)
    kvm           create a KVM virtual machine with one vCPU on /dev/kvm and
                  keep it until the end (so the kernel keeps KVM statistics
                  for this process, as for a real hvt guest); "kvm failed:
                  REASON" and status 1 when /dev/kvm refuses
    longline N    write N bytes "x" with no newline
    reject-name   (anywhere) exit 64 if the first argument is --name=...

A leading "--name=X" argument is otherwise ignored.  The program ends with
status 0 when no command stops it.  Unknown commands: status 64.  The last
console line is "Solo5: solo5_exit(N) called" (preceded by a newline if the
console is mid-line).  SIGTERM/SIGINT: hvt prints "solo5-hvt: Exiting on
signal N" on stderr and exits 1; spt dies by the signal.

Environment (tests only): STAND_IN_TENDER_LOG=FILE appends one JSON line
{"argv": [...], "pid": N} per invocation.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import struct
import sys
import threading
import time
from pathlib import Path

try:
    from albatross.solo5 import elf
except ImportError:  # run with an interpreter lacking the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from albatross.solo5 import elf

VERSION = "v0.12.1"
ABI_VERSION = 2
NAME_RE = re.compile(r"[A-Za-z0-9]{1,67}\Z")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class Fail(Exception):
    """A tender-side error: one line on stderr, exit 1."""


def invoked_as() -> str:
    """The tender path as invoked (the bin/ wrapper passes its own $0)."""
    return os.environ.get("STAND_IN_TENDER_ARGV0") or sys.argv[0]


def flavour() -> str:
    base = re.sub(r"\.\d+\Z", "", os.path.basename(invoked_as()))
    return "spt" if base == "solo5-spt" else "hvt"


TARGET = flavour()
PROG = f"solo5-{TARGET}"


def err(msg: str) -> None:
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()


def usage() -> str:
    return (
        f"usage: {PROG} [ CORE OPTIONS ] [ MODULE OPTIONS ] [ -- ] KERNEL [ ARGS ]\n"
        "KERNEL is the filename of the unikernel to run.\n"
        "ARGS are optional arguments passed to the unikernel.\n"
        "Core options:\n"
        "  [ --mem=512 ] (guest memory in MB)\n"
        "    --help (display this help)\n"
        "    --version (display version information)\n"
        "Compiled-in modules: net block\n"
        "Compiled-in module options:\n"
        "    [ --net:NAME=IFACE | @NN ] (attach tap at IFACE with name NAME)\n"
        "    [ --net-mac:NAME=HWADDR ] (set HWADDR for tap interface with name NAME)\n"
        "    [ --block:NAME=PATH ] (attach block device/file at PATH with name NAME)\n"
        "    [ --block-sector-size:NAME=N ] (set N as the sector size for block device NAME)\n"
    )


def usage_exit(msg: str | None = None) -> None:
    if msg is not None:
        err(msg)
    sys.stderr.write(usage())
    sys.stderr.flush()
    sys.exit(1)


def split_named(arg: str, prefix: str) -> tuple[str, str]:
    rest = arg[len(prefix):]
    name, sep, value = rest.partition("=")
    if not sep or not NAME_RE.match(name) or not value:
        raise Fail(f"Malformed argument to {prefix[:-1]}")
    return name, value


class Command:
    def __init__(self) -> None:
        self.mem = 512
        self.nets: dict[str, str] = {}
        self.macs: dict[str, str] = {}
        self.blocks: dict[str, str] = {}
        self.sector_sizes: dict[str, int] = {}
        self.kernel = ""
        self.args: list[str] = []


def parse(argv: list[str]) -> Command:
    cmd = Command()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-"):
            break
        if a == "--version":
            sys.stderr.write(f"{PROG} tender, version {VERSION}\nABI version {ABI_VERSION}\n")
            sys.stderr.flush()
            sys.exit(0)
        if a == "--help":
            usage_exit()
        if a.startswith("--mem="):
            v = a[len("--mem="):]
            if not v.isdigit() or int(v) == 0:
                raise Fail("Malformed argument to --mem")
            cmd.mem = int(v)
        elif a.startswith("--net-mac:"):
            name, mac = split_named(a, "--net-mac:")
            if not MAC_RE.match(mac):
                raise Fail("Malformed argument to --net-mac")
            cmd.macs[name] = mac
        elif a.startswith("--net:"):
            name, iface = split_named(a, "--net:")
            if len(iface) >= 16:
                raise Fail(f"Could not attach interface: {iface}: Invalid argument")
            cmd.nets[name] = iface
        elif a.startswith("--block-sector-size:"):
            name, size = split_named(a, "--block-sector-size:")
            n = int(size) if size.isdigit() else 0
            if n < 512 or n & (n - 1):
                raise Fail("Malformed argument to --block-sector-size")
            cmd.sector_sizes[name] = n
        elif a.startswith("--block:"):
            name, path = split_named(a, "--block:")
            cmd.blocks[name] = path
        else:
            usage_exit(f"Invalid option: `{a}'")
        i += 1
    if i >= len(argv):
        usage_exit("Missing KERNEL operand")
    cmd.kernel = argv[i]
    cmd.args = argv[i + 1:]
    return cmd


def check_memory(cmd: Command) -> None:
    if TARGET == "hvt":
        if cmd.mem > 4096:
            raise Fail(f"Maximum guest memory size is 4096 MB, requested {cmd.mem} MB")
        if cmd.mem % 2:
            rounded = cmd.mem - cmd.mem % 2
            if rounded == 0:
                raise Fail("Malformed argument to --mem")
            err(f"WARNING: Guest memory size {cmd.mem} MB rounded down to {rounded} MB")
            cmd.mem = rounded


def load_image(cmd: Command) -> elf.Manifest:
    try:
        with open(cmd.kernel, "rb") as f:
            image = f.read()
    except OSError as e:
        raise Fail(f"{cmd.kernel}: Could not open: {e.strerror}")
    try:
        abi = elf.query_abi(image)
    except elf.Solo5Error as e:
        raise Fail(f"{cmd.kernel}: Invalid or unsupported executable ({e})")
    if abi.target != TARGET:
        raise Fail(f"{cmd.kernel}: Executable is not for the solo5-{TARGET} target")
    if abi.version != ABI_VERSION:
        raise Fail(f"{cmd.kernel}: ABI version {abi.version} not supported (tender is ABI version {ABI_VERSION})")
    try:
        return elf.query_manifest(image)
    except elf.Solo5Error as e:
        raise Fail(f"{cmd.kernel}: Invalid or unsupported executable ({e})")


def attach_tap(iface: str) -> int | None:
    """Check (and if we can, really attach) a tap; returns the open fd or None."""
    sysdir = Path("/sys/class/net") / iface
    if not sysdir.exists():
        raise Fail(f"Could not attach interface: {iface}: No such file or directory")
    fd = None
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH22x", iface.encode(), IFF_TAP | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        if fd is not None:
            os.close(fd)
            fd = None
        if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOENT, errno.ENODEV):
            raise Fail(f"Could not attach interface: {iface}: {os.strerror(e.errno or 0)}")
    try:
        flags = int((sysdir / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        flags = 1
    if not flags & 0x1:  # IFF_UP
        raise Fail(f"Could not attach interface: {iface}: Network is down")
    return fd


NET_FDS: list[int] = []  # attached taps, for "netsend"
FRAME = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + b"stand-in unikernel frame" * 3


def check_devices(cmd: Command, manifest: elf.Manifest) -> list[int]:
    declared = dict(manifest.devices)
    for name in list(cmd.nets) + list(cmd.macs):
        if declared.get(name) != "NET_BASIC":
            raise Fail(f"Resource not declared in manifest: '{name}'")
    for name in list(cmd.blocks) + list(cmd.sector_sizes):
        if declared.get(name) != "BLOCK_BASIC":
            raise Fail(f"Resource not declared in manifest: '{name}'")
    fds = NET_FDS
    for iface in cmd.nets.values():
        fd = attach_tap(iface)
        if fd is not None:
            fds.append(fd)
    for name, path in cmd.blocks.items():
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise Fail(f"Could not open block device: {path}: {e.strerror}")
        size = os.fstat(fd).st_size
        os.close(fd)
        sector = cmd.sector_sizes.get(name, 512)
        if size < sector or size % sector:
            raise Fail(f"{path}: Backing storage size must be a multiple of the sector size ({sector})")
    missing = [(n, t) for n, t in manifest.devices if n not in cmd.nets and n not in cmd.blocks]
    for n, t in missing:
        err(f"Device '{n}' of type {t} declared but not attached.")
    if missing:
        raise Fail("All declared devices must be attached. See --help for syntax.")
    return fds


# --------------------------------------------------------------------------
# The "unikernel"
# --------------------------------------------------------------------------

class Console:
    def __init__(self) -> None:
        self.mid_line = False

    def write(self, text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.mid_line = not text.endswith("\n")

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def finish(self, text: str) -> None:
        if self.mid_line:
            self.write("\n")
        self.line(text)


CONSOLE = Console()


def solo5_exit(status: int) -> None:
    CONSOLE.finish(f"Solo5: solo5_exit({status}) called")
    sys.exit(status & 0xFF)


def solo5_abort() -> None:
    CONSOLE.finish("Solo5: solo5_abort() called")
    sys.exit(255)


def banner(cmd: Command, manifest: elf.Manifest) -> None:
    CONSOLE.write(
        "            |      ___|\n"
        "  __|  _ \\  |  _ \\ __ \\\n"
        "\\__ \\ (   | | (   |  ) |\n"
        "____/\\___/ _|\\___/____/\n"
    )
    CONSOLE.line(f"Solo5: Bindings version {VERSION} (stand-in)")
    CONSOLE.line(f"Solo5: Memory map: {cmd.mem} MB addressable:")
    CONSOLE.line("Solo5:   reserved @ (0x0 - 0xfffff)")
    for name, typ in manifest.devices:
        kind = "network" if typ == "NET_BASIC" else "block"
        CONSOLE.line(f"Solo5: Application acquired '{name}' as {kind} device")


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


KVM_FDS: list[int] = []
KVM_CREATE_VM = 0xAE01    # _IO(KVMIO, 0x01)
KVM_CREATE_VCPU = 0xAE41  # _IO(KVMIO, 0x41)


def create_kvm_vm() -> list[int]:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    return [kvm, vm, vcpu]


def run_program(args: list[str]) -> None:
    words = " ".join(args).split()
    reject_name = "reject-name" in words
    words = [w for w in words if w != "reject-name"]
    if words and words[0].startswith("--name="):
        if reject_name:
            CONSOLE.line("unikernel: unknown option '--name'.")
            solo5_exit(64)
        words = words[1:]
    i = 0

    def arg(kind: type = int):
        nonlocal i
        if i >= len(words):
            CONSOLE.line(f"unikernel: missing argument after '{words[i - 1]}'")
            solo5_exit(64)
        try:
            value = kind(words[i])
        except ValueError:
            CONSOLE.line(f"unikernel: invalid argument '{words[i]}'")
            solo5_exit(64)
        i += 1
        return value

    while i < len(words):
        w = words[i]
        i += 1
        if w == "exit":
            solo5_exit(arg())
        elif w == "sleep":
            time.sleep(arg(float))
            if i < len(words) and re.fullmatch(r"-?\d+", words[i]):
                solo5_exit(arg())
        elif w == "print":
            CONSOLE.line(arg(str))
        elif w == "forever":
            k = 0
            while True:
                CONSOLE.line(f"tick {k}")
                k += 1
                time.sleep(0.2)
        elif w == "abort":
            solo5_abort()
        elif w == "fault":
            if TARGET == "spt":
                signal.signal(signal.SIGSEGV, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGSEGV)
                time.sleep(5)
            CONSOLE.finish("Solo5: trap: type=#PF ec=0x0 rip=0x100020 rsp=0x1ffff8 rflags=0x2")
            sys.exit(255)
        elif w == "spam":
            n = arg()
            sys.stdout.write("".join(f"spam {k}\n" for k in range(n)))
            sys.stdout.flush()
            CONSOLE.mid_line = False
        elif w == "netsend":
            for _ in range(arg()):
                for fd in NET_FDS:
                    os.write(fd, FRAME)
        elif w == "netrecv":
            for fd in NET_FDS:
                threading.Thread(target=_drain, args=(fd,), daemon=True).start()
        elif w == "busy":
            end = time.monotonic() + arg(float)
            while time.monotonic() < end:
                sum(range(1000))
        elif w == "kvm":
            try:
                KVM_FDS.extend(create_kvm_vm())
            except OSError as e:
                CONSOLE.line(f"kvm failed: {e.strerror}")
                solo5_exit(1)
            CONSOLE.line("kvm vm created")
        elif w == "longline":
            CONSOLE.write("x" * arg())
        else:
            CONSOLE.line(f"unikernel: unknown command '{w}'")
            solo5_exit(64)
    solo5_exit(0)


def on_signal(signum: int, _frame) -> None:
    err(f"Exiting on signal {signum}")
    os._exit(1)


def main() -> None:
    log = os.environ.get("STAND_IN_TENDER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"argv": [invoked_as()] + sys.argv[1:], "pid": os.getpid()}) + "\n")
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal if TARGET == "hvt" else signal.SIG_DFL)
    try:
        cmd = parse(sys.argv[1:])
        check_memory(cmd)
        manifest = load_image(cmd)
        check_devices(cmd, manifest)
    except Fail as e:
        err(str(e))
        sys.exit(1)
    banner(cmd, manifest)
    try:
        run_program(cmd.args)
    except BrokenPipeError:
        os._exit(1)


if __name__ == "__main__":
    main()
