"""Human-readable printing of messages, the way upstream's client prints them.

Used by albatross-client for its output and by the daemons for logs.
"""

from __future__ import annotations

from .core import (
    BlockDevice, FailBehaviour, Ifdata, KinfoMem, NetDevice, Policy, Rusage, Stats,
    UnikernelArguments, UnikernelConfig, UnikernelInfo,
)
from .policy.names import Name, mac_to_string
from .wire import messages as m


def escaped(line: bytes) -> str:
    """OCaml's String.escaped: keep terminal control data harmless."""
    out = []
    for b in line:
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c == "\b":
            out.append("\\b")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def policy(p: Policy) -> str:
    return p.describe()


def fail_behaviour(f: FailBehaviour) -> str:
    if not f.restart:
        return "quit"
    if f.exit_codes is None:
        return "restart all except 1"
    return "restart " + ", ".join(str(c) for c in sorted(f.exit_codes))


def _cpus(c) -> str:
    return ", ".join(str(x) for x in sorted(c))


def _block(b: BlockDevice) -> str:
    s = f"{b.name} -> {b.host_device}"
    if b.sector_size is not None:
        s += f", sector-size: {b.sector_size}"
    return s


def _bridge(n: NetDevice) -> str:
    s = f"{n.name} -> {n.host_bridge}"
    if n.mac is not None:
        s += "@" + mac_to_string(n.mac)
    return s


def _opt(v, none="not specified") -> str:
    return none if v is None else str(v)


def _argv(argv) -> str:
    return "argv " + ("no" if argv is None else " ".join(argv))


def _typ(t: str) -> str:
    return "BHyve" if t == "bhyve" else "solo5"


def _config_parts(c: UnikernelConfig, verbose: bool = False) -> list[str]:
    parts = [f"typ {_typ(c.typ)}", f"compression {str(c.compressed).lower()} image {len(c.image)} bytes",
             f"fail behaviour {fail_behaviour(c.fail_behaviour)}", f"startup at {_opt(c.startup)}",
             f"add_name {str(c.add_name).lower()}", f"CPUids {_cpus(c.cpuids)}", f"{c.memory} MB memory",
             f"block devices {', '.join(_block(b) for b in c.block_devices)}",
             f"bridge {', '.join(_bridge(n) for n in c.bridges)}", f"#cpus {c.numcpus}",
             f"linux_boot {_opt(c.linux_boot_partition)}"]
    return parts + [_argv(c.argv)] if verbose else parts


def config(c: UnikernelConfig, verbose: bool = False) -> str:
    return " ".join(_config_parts(c, verbose))


def _arguments_parts(a: UnikernelArguments, verbose: bool = False) -> list[str]:
    parts = [f"fail behaviour {fail_behaviour(a.fail_behaviour)}", f"startup at {_opt(a.startup)}",
             f"add_name {str(a.add_name).lower()}", f"CPUids {_cpus(a.cpuids)}", f"{a.memory} MB memory",
             f"block devices {', '.join(_block(b) for b in a.block_devices)}",
             f"bridge {', '.join(_bridge(n) for n in a.bridges)}", f"#cpus {a.numcpus}",
             f"linux_boot_partition {_opt(a.linux_boot_partition)}"]
    return parts + [_argv(a.argv)] if verbose else parts


def arguments(a: UnikernelArguments, verbose: bool = False) -> str:
    return " ".join(_arguments_parts(a, verbose))


def _info_parts(i: UnikernelInfo, verbose: bool = False) -> list[str]:
    blocks = ", ".join(f"{b.unikernel_device} -> {b.host_device} (sector-size: {b.sector_size} bytes, "
                       f"size {b.size} MB)" for b in i.block_devices)
    nets = ", ".join(f"{n.unikernel_device} -> {n.host_device} (mac {mac_to_string(n.mac)})" for n in i.bridges)
    digest = f"bhyve-vmname {i.digest.decode('utf-8', 'replace')}" if i.typ == "bhyve" else f"digest {i.digest.hex()}"
    parts = [f"typ {_typ(i.typ)}", f"started {i.started.rfc3339_upstream()}",
             f"fail behaviour {fail_behaviour(i.fail_behaviour)}", f"startup at {_opt(i.startup)}",
             f"CPUids {_cpus(i.cpuids)}", f"{i.memory} MB memory", f"block devices {blocks}", f"bridge {nets}",
             digest, f"#cpus {i.numcpus}", f"linux_boot_partition {_opt(i.linux_boot_partition)}"]
    return parts + [_argv(i.argv)] if verbose else parts


def info(i: UnikernelInfo, verbose: bool = False) -> str:
    return " ".join(_info_parts(i, verbose))


def rusage(r: Rusage) -> str:
    return (f"utime {r.utime.seconds}.{r.utime.microseconds:06d} stime {r.stime.seconds}.{r.stime.microseconds:06d} "
            f"maxrss {r.maxrss} ixrss {r.ixrss} idrss {r.idrss} isrss {r.isrss} minflt {r.minflt} "
            f"majflt {r.majflt} nswap {r.nswap} inblock {r.inblock} outblock {r.outblock} "
            f"msgsnd {r.msgsnd} msgrcv {r.msgrcv} signals {r.nsignals} nvcsw {r.nvcsw} nivcsw {r.nivcsw}")


def kinfo_mem(k: KinfoMem) -> str:
    return (f"virtual-size {k.vsize} rss {k.rss} text-size {k.tsize} data-size {k.dsize} "
            f"stack-size {k.ssize} runtime {k.runtime} cow {k.cow} start {k.start.seconds}.{k.start.microseconds:06d}")


def ifdata(i: Ifdata) -> str:
    u32 = lambda v: v & 0xFFFFFFFF  # noqa: E731
    return (f"bridge {i.bridge} flags {u32(i.flags):X} send_length {u32(i.send_length)} "
            f"max_send_length {u32(i.max_send_length)} send_drops {u32(i.send_drops)} mtu {u32(i.mtu)} "
            f"baudrate {i.baudrate} input_packets {i.input_packets} input_errors {i.input_errors} "
            f"output_packets {i.output_packets} output_errors {i.output_errors} collisions {i.collisions} "
            f"input_bytes {i.input_bytes} output_bytes {i.output_bytes} input_mcast {i.input_mcast} "
            f"output_mcast {i.output_mcast} input_dropped {i.input_dropped} output_dropped {i.output_dropped}")


def stats(s: Stats) -> str:
    mem = "no kinfo_mem stats" if s.kinfo_mem is None else kinfo_mem(s.kinfo_mem)
    vmm = "no vmm stats" if s.vmm is None else "\n".join(f"{k}: {v}" for k, v in s.vmm)
    return "\n".join([rusage(s.rusage), mem, vmm, "\n\n".join(ifdata(i) for i in s.ifdata)])


def _command_parts(c: m.Cmd, verbose: bool = False) -> list[str]:
    """A command as pieces between upstream's break hints (``@ ``)."""
    match c:
        case m.UnikernelCreate(cfg, force):
            parts = _config_parts(cfg, verbose)
            return [("unikernel force create " if force else "unikernel create ") + parts[0], *parts[1:]]
        case m.UnikernelRestart(args) if args is not None:
            parts = _arguments_parts(args, verbose)
            return ["unikernel restart " + parts[0], *parts[1:]]
        case m.UnikernelRestart():
            return ["unikernel restart"]
    return [command(c, verbose)]


def command(c: m.Cmd, verbose: bool = False) -> str:
    match c:
        case m.ConsoleAdd(n):
            return f"console add (max unikernels {n})"
        case m.ConsoleSubscribe(since, count):
            return ("console subscribe " + (f"since {since.rfc3339_upstream()}" if since is not None
                                            else f"number {count}"))
        case m.ConsoleListInactive():
            return "console list inactive available ringbuffers"
        case m.StatsAdd(vmmdev, pid, taps):
            return (f"stats add: vmm device {vmmdev} pid {pid} taps "
                    + ", ".join(f"{a}: {b}" for a, b in taps))
        case m.StatsRemove():
            return "stat remove"
        case m.StatsSubscribe():
            return "stat subscribe"
        case m.StatsInitial():
            return "stat initial"
        case m.UnikernelInfoCmd():
            return "unikernel info"
        case m.OldUnikernelInfo4():
            return "old unikernel info4"
        case m.OldUnikernelInfo5():
            return "old unikernel info5"
        case m.UnikernelCreate() | m.UnikernelRestart():
            return " ".join(_command_parts(c, verbose))
        case m.UnikernelDestroy():
            return "unikernel destroy"
        case m.UnikernelGet(level):
            return f"unikernel get compress level {level}"
        case m.PolicyInfoCmd():
            return "policy info"
        case m.PolicyAdd(p):
            return "policy add " + policy(p)
        case m.PolicyRemove():
            return "policy remove"
        case m.BlockInfoCmd():
            return "block info"
        case m.BlockRemove():
            return "block remove"
        case m.OldBlockAdd(size, compressed, data):
            d = "no data" if data is None else str(len(data))
            return f"old block add {size} (compressed {str(compressed).lower()} data {d})"
        case m.OldBlockSet(compressed, data):
            return f"old block set compressed {str(compressed).lower()} {len(data)} bytes"
        case m.BlockDump(level):
            return f"block dump, compress level {level}"
        case m.OldBlockDump(level):
            return f"old block dump, compress level {level}"
        case m.BlockAdd(size):
            return f"block add {size}"
        case m.BlockSet(compressed):
            return f"block set compressed {str(compressed).lower()}"
    return repr(c)


def _list(empty: str, items: list[str]) -> str:
    return "\n".join(items) if items else empty


def success(s: m.Reply, verbose: bool = False) -> str:
    match s:
        case m.Empty():
            return "success"
        case m.String(text):
            return f"success: {text}"
        case m.Policies(ps):
            return _list("no policies", [f"{n.pretty()}: {policy(p)}" for n, p in ps])
        case m.UnikernelInfos(infos, _):
            return _list("no unikernels", [f"{n.pretty()}: {info(i, verbose)}" for n, i in infos])
        case m.UnikernelImage(compressed, image):
            return f"image (compression {str(compressed).lower()}) {len(image)} bytes"
        case m.BlockDevices(bs):
            return _list("no block devices",
                         [f"block {n.pretty()} size {size} MB active {str(a).lower()}" for n, size, a in bs])
        case m.OldBlockDeviceImage(compressed, data):
            return f"old block device compressed {str(compressed).lower()}, {len(data)} bytes"
        case m.BlockDeviceImage(compressed):
            return f"block device compressed {str(compressed).lower()}"
        case m.Consoles(names):
            return _list("no consoles", [n.pretty() for n in names])
    return repr(s)


def data(d: m.Data) -> str:
    match d:
        case m.ConsoleData(ts, line):
            return f"console {ts.rfc3339_upstream()}: {escaped(line)}"
        case m.StatsData(st):
            return "stats: " + stats(st)
        case m.BlockData(blob):
            return "block data " + ("eof" if blob is None else f"{len(blob)} bytes")
    return repr(d)


def _wire_boxes(w: m.Wire, verbose: bool = False) -> list[list[str]]:
    """``w`` as upstream's pretty-printer sees it: one box per line of a list
    reply, each box the pieces between its break hints."""
    name = w.header.name.pretty()
    p = w.payload
    if isinstance(p, m.Cmd):
        parts = _command_parts(p, verbose)
        return [[f"host {name}: {parts[0]}", *parts[1:]]]
    if isinstance(p, m.Failure):
        return [[f"host {name}: command failed {p.message}"]]
    if isinstance(p, m.UnikernelInfos) and p.unikernels:
        boxes = [[f"{n.pretty()}: {parts[0]}", *parts[1:]]
                 for n, i in p.unikernels for parts in [_info_parts(i, verbose)]]
        boxes[0][0] = f"host {name}: {boxes[0][0]}"
        return boxes
    if isinstance(p, m.Reply):
        return [[f"host {name}: {success(p, verbose)}"]]
    return [[data(p)]]


def wire(w: m.Wire, verbose: bool = False) -> str:
    """``w`` on one line per list element (for logs and messages)."""
    return "\n".join(" ".join(box) for box in _wire_boxes(w, verbose))


#: the right margin of OCaml's Format (upstream prints through it)
MARGIN = 78


def fill(parts: list[str], column: int = 0, margin: int = MARGIN, last_breaks: bool = False) -> str:
    """Join ``parts`` with spaces, breaking lines as OCaml's Format does for a
    box opened at ``column`` whose break hints (``@ ``) separate the parts: a
    hint becomes a newline (indented to ``column``) when the next part would
    not fit before the margin (a line reaching the margin counts as too long,
    like Format's look-ahead).  Lengths are in bytes, as in OCaml.

    ``last_breaks``: the last hint always becomes a newline.  Format does so
    for the elements after the first of a list printed with ``@.`` between
    them (upstream's list replies): ``@.`` flushes and closes every box, so
    the later elements sit in no box of their own, and a hint whose look-ahead
    is still open at the final flush counts as infinitely long."""
    out = [parts[0]]
    col = column + len(parts[0].rsplit("\n", 1)[-1].encode())
    for k, part in enumerate(parts[1:], 2):
        n = len(part.encode())
        if col + 1 + n >= margin or (last_breaks and k == len(parts)):
            out.append("\n" + " " * column + part)
            col = column + n
        else:
            out.append(" " + part)
            col += 1 + n
    return "".join(out)


def wire_wrapped(w: m.Wire, verbose: bool = False, column: int = 0) -> str:
    """``w`` exactly as upstream's client prints it (wrapped at the margin)."""
    boxes = _wire_boxes(w, verbose)
    return "\n".join(fill(box, column) if k == 0 else fill(box, last_breaks=True) for k, box in enumerate(boxes))


def config_wrapped(prefix: str, c: UnikernelConfig, verbose: bool = False) -> str:
    """``prefix`` and ``c`` as upstream's inspect-dump / extract-dump print them."""
    parts = _config_parts(c, verbose)
    return fill([prefix + parts[0], *parts[1:]])


def command_wrapped(prefix: str, c: m.Cmd, verbose: bool = False) -> str:
    parts = _command_parts(c, verbose)
    return fill([prefix + parts[0], *parts[1:]])


__all__ = ["wire", "wire_wrapped", "config_wrapped", "command_wrapped", "fill", "success", "command", "data", "config", "info", "policy", "escaped", "Name"]
