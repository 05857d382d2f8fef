"""A lossless JSON form of messages, certificate extensions and state files.

Used by ``albatross-client wire decode/encode`` and by the golden vectors:
names are printed as upstream's ``to_string``, bytes as hex (``*_hex``,
with their length in ``*_len``), timestamps as
``{"rfc3339", "unix_s", "frac_ps"}``.  Strings that are not valid UTF-8 keep
their bytes through Python's surrogateescape (and appear as ``\\udcXX``
escapes in the JSON text).

The reader is lenient: it ignores the informational ``*_len`` fields and
accepts a timestamp given only as ``rfc3339``.
"""

from __future__ import annotations

from typing import Any

from ..core import (
    BlockDevice, BlockInfo, FailBehaviour, Ifdata, KinfoMem, NetDevice, NetInfo,
    Policy, Ptime, Rusage, Stats, Timeval, UnikernelArguments, UnikernelConfig,
    UnikernelInfo,
)
from ..errors import AlbatrossError, DecodeError
from ..policy.names import Name, mac_of_string, mac_to_string
from . import messages as m
from .state import State

J = dict[str, Any]


def _s(x: str | bytes) -> str:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", "surrogateescape")
    return x


def _b(x: str) -> bytes:
    return x.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ values

def time_to_json(t: Ptime) -> J:
    return {"rfc3339": t.rfc3339(), "unix_s": t.seconds, "frac_ps": t.frac_ps}


def time_of_json(j) -> Ptime:
    if isinstance(j, dict) and "unix_s" in j:
        return Ptime(int(j["unix_s"]), int(j.get("frac_ps", 0)))
    text = j["rfc3339"] if isinstance(j, dict) else j
    return parse_rfc3339(text)


def parse_rfc3339(text: str) -> Ptime:
    import datetime as dt
    t = text.strip()
    if len(t) == 10:
        t += "T00:00:00Z"
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    if t.endswith("-00:00"):
        t = t[:-6] + "+00:00"
    frac_ps = 0
    if "." in t:
        head, rest = t.split(".", 1)
        digits = ""
        while rest and rest[0].isdigit():
            digits += rest[0]
            rest = rest[1:]
        frac_ps = int((digits + "0" * 12)[:12]) if digits else 0
        t = head + rest
    try:
        d = dt.datetime.fromisoformat(t)
    except ValueError:
        raise AlbatrossError(f"invalid RFC 3339 timestamp {text!r}") from None
    p = Ptime.of_datetime(d)
    return Ptime(p.seconds, frac_ps)


def policy_to_json(p: Policy) -> J:
    return {
        "unikernels": p.unikernels,
        "cpuids": sorted(p.cpuids),
        "memory": p.memory,
        "block": p.block,
        "bridges": sorted(p.bridges, key=_b),
    }


def policy_of_json(j: J) -> Policy:
    return Policy(int(j["unikernels"]), frozenset(j["cpuids"]), int(j["memory"]),
                  None if j.get("block") is None else int(j["block"]), frozenset(j["bridges"]))


def fail_to_json(f: FailBehaviour) -> J:
    if not f.restart:
        return {"type": "quit"}
    return {"type": "restart",
            "exit_codes": None if f.exit_codes is None else sorted(f.exit_codes)}


def fail_of_json(j: J) -> FailBehaviour:
    if j["type"] == "quit":
        return FailBehaviour(False, None)
    if j["type"] == "restart":
        codes = j.get("exit_codes")
        return FailBehaviour(True, None if codes is None else frozenset(codes))
    raise AlbatrossError(f"unknown fail behaviour {j['type']!r}")


def _devices_to_json(x) -> J:
    return {
        "block_devices": [{"name": b.name, "device": b.device, "sector_size": b.sector_size}
                          for b in x.block_devices],
        "bridges": [{"name": n.name, "bridge": n.bridge,
                     "mac": None if n.mac is None else mac_to_string(n.mac)} for n in x.bridges],
        "argv": None if x.argv is None else list(x.argv),
        "numcpus": x.numcpus,
        "linux_boot_partition": x.linux_boot_partition,
    }


def _devices_of_json(j: J) -> J:
    return dict(
        block_devices=tuple(BlockDevice(b["name"], b.get("device"), b.get("sector_size"))
                            for b in j.get("block_devices", [])),
        bridges=tuple(NetDevice(n["name"], n.get("bridge"),
                                None if n.get("mac") is None else mac_of_string(n["mac"]))
                      for n in j.get("bridges", [])),
        argv=None if j.get("argv") is None else tuple(j["argv"]),
        numcpus=int(j.get("numcpus", 1)),
        linux_boot_partition=j.get("linux_boot_partition"),
    )


def _hex_field(j: J, *keys: str) -> bytes:
    for k in keys:
        if k in j and j[k] is not None:
            return bytes.fromhex(j[k])
    return b""


def config_to_json(c: UnikernelConfig) -> J:
    d = {
        "typ": c.typ,
        "compressed": c.compressed,
        "image_hex": c.image.hex(),
        "image_len": len(c.image),
        "fail_behaviour": fail_to_json(c.fail_behaviour),
        "startup": c.startup,
        "add_name": c.add_name,
        "cpuids": sorted(c.cpuids),
        "memory": c.memory,
    }
    d.update(_devices_to_json(c))
    return d


def config_of_json(j: J) -> UnikernelConfig:
    return UnikernelConfig(
        typ=j.get("typ", "solo5"), compressed=bool(j["compressed"]), image=_hex_field(j, "image_hex"),
        fail_behaviour=fail_of_json(j["fail_behaviour"]), startup=j.get("startup"),
        add_name=bool(j.get("add_name", True)), cpuids=frozenset(j["cpuids"]), memory=int(j["memory"]),
        **_devices_of_json(j),
    )


def arguments_to_json(a: UnikernelArguments) -> J:
    d = {
        "fail_behaviour": fail_to_json(a.fail_behaviour),
        "startup": a.startup,
        "add_name": a.add_name,
        "cpuids": sorted(a.cpuids),
        "memory": a.memory,
    }
    d.update(_devices_to_json(a))
    return d


def arguments_of_json(j: J) -> UnikernelArguments:
    return UnikernelArguments(
        fail_behaviour=fail_of_json(j["fail_behaviour"]), startup=j.get("startup"),
        add_name=bool(j.get("add_name", True)), cpuids=frozenset(j["cpuids"]), memory=int(j["memory"]),
        **_devices_of_json(j),
    )


def info_to_json(i: UnikernelInfo) -> J:
    return {
        "typ": i.typ,
        "fail_behaviour": fail_to_json(i.fail_behaviour),
        "startup": i.startup,
        "cpuids": sorted(i.cpuids),
        "memory": i.memory,
        "block_devices": [{"unikernel_device": b.unikernel_device, "host_device": b.host_device,
                           "sector_size": b.sector_size, "size": b.size} for b in i.block_devices],
        "bridges": [{"unikernel_device": n.unikernel_device, "host_device": n.host_device,
                     "mac": mac_to_string(n.mac)} for n in i.bridges],
        "argv": None if i.argv is None else list(i.argv),
        "digest_hex": i.digest.hex(),
        "started": time_to_json(i.started),
        "numcpus": i.numcpus,
        "linux_boot_partition": i.linux_boot_partition,
    }


def info_of_json(j: J) -> UnikernelInfo:
    return UnikernelInfo(
        typ=j.get("typ", "solo5"), fail_behaviour=fail_of_json(j["fail_behaviour"]),
        startup=j.get("startup"), cpuids=frozenset(j["cpuids"]), memory=int(j["memory"]),
        block_devices=tuple(BlockInfo(b["unikernel_device"], b["host_device"], int(b["sector_size"]),
                                      int(b["size"])) for b in j.get("block_devices", [])),
        bridges=tuple(NetInfo(n["unikernel_device"], n["host_device"], mac_of_string(n["mac"]))
                      for n in j.get("bridges", [])),
        argv=None if j.get("argv") is None else tuple(j["argv"]),
        digest=_hex_field(j, "digest_hex"),
        started=time_of_json(j["started"]) if j.get("started") is not None else Ptime(0, 0),
        numcpus=int(j.get("numcpus", 1)), linux_boot_partition=j.get("linux_boot_partition"),
    )


def _timeval_to_json(t: Timeval) -> J:
    return {"seconds": t.seconds, "microseconds": t.microseconds}


def _timeval_of_json(j: J) -> Timeval:
    return Timeval(int(j["seconds"]), int(j["microseconds"]))


def stats_to_json(s: Stats) -> J:
    ru = s.rusage
    rusage = {"utime": _timeval_to_json(ru.utime), "stime": _timeval_to_json(ru.stime)}
    for f in Rusage.__dataclass_fields__:
        if f not in ("utime", "stime"):
            rusage[f] = getattr(ru, f)
    kinfo = None
    if s.kinfo_mem is not None:
        k = s.kinfo_mem
        kinfo = {f: getattr(k, f) for f in KinfoMem.__dataclass_fields__ if f != "start"}
        kinfo["start"] = _timeval_to_json(k.start)
    return {
        "rusage": rusage,
        "kinfo_mem": kinfo,
        "vmm": None if s.vmm is None else [[k, v] for k, v in s.vmm],
        "ifdata": [{f: getattr(i, f) for f in Ifdata.__dataclass_fields__} for i in s.ifdata],
    }


def stats_of_json(j: J) -> Stats:
    r = j["rusage"]
    rusage = Rusage(_timeval_of_json(r["utime"]), _timeval_of_json(r["stime"]),
                    **{f: int(r.get(f, 0)) for f in Rusage.__dataclass_fields__ if f not in ("utime", "stime")})
    kinfo = None
    if j.get("kinfo_mem") is not None:
        k = j["kinfo_mem"]
        kinfo = KinfoMem(start=_timeval_of_json(k["start"]),
                         **{f: int(k[f]) for f in KinfoMem.__dataclass_fields__ if f != "start"})
    vmm = None if j.get("vmm") is None else tuple((k, int(v)) for k, v in j["vmm"])
    ifdata = tuple(Ifdata(**{f: (i[f] if f == "bridge" else int(i.get(f, 0)))
                             for f in Ifdata.__dataclass_fields__}) for i in j.get("ifdata", []))
    return Stats(rusage, kinfo, vmm, ifdata)


# ---------------------------------------------------------------- commands

def command_to_json(c: m.Cmd) -> J:
    d: J = {"group": c.GROUP, "cmd": c.cmd}
    match c:
        case m.ConsoleAdd(n):
            d["max_unikernels"] = n
        case m.ConsoleSubscribe(since, count):
            if since is not None:
                d["since"] = time_to_json(since)
            else:
                d["count"] = count
        case m.StatsAdd(vmmdev, pid, taps):
            d.update(vmmdev=vmmdev, pid=pid, taps=[{"bridge": b, "tap": t} for b, t in taps])
        case m.UnikernelCreate(config, _):
            d["config"] = config_to_json(config)
        case m.UnikernelRestart(args):
            d["arguments"] = None if args is None else arguments_to_json(args)
        case m.UnikernelGet(level) | m.BlockDump(level) | m.OldBlockDump(level):
            d["compress_level"] = level
        case m.PolicyAdd(policy):
            d["policy"] = policy_to_json(policy)
        case m.BlockAdd(size):
            d["size"] = size
        case m.BlockSet(compressed):
            d["compressed"] = compressed
        case m.OldBlockAdd(size, compressed, data):
            d.update(size=size, compressed=compressed, data_hex=None if data is None else data.hex())
        case m.OldBlockSet(compressed, data):
            d.update(compressed=compressed, data_hex=data.hex())
    return d


_SIMPLE_COMMANDS = {
    "Console_list_inactive": m.ConsoleListInactive, "Stats_remove": m.StatsRemove,
    "Stats_subscribe": m.StatsSubscribe, "Stats_initial": m.StatsInitial,
    "Unikernel_info": m.UnikernelInfoCmd, "Old_unikernel_info4": m.OldUnikernelInfo4,
    "Old_unikernel_info5": m.OldUnikernelInfo5, "Unikernel_destroy": m.UnikernelDestroy,
    "Policy_info": m.PolicyInfoCmd, "Policy_remove": m.PolicyRemove,
    "Block_info": m.BlockInfoCmd, "Block_remove": m.BlockRemove,
}


def command_of_json(j: J) -> m.Cmd:
    cmd = j["cmd"]
    if cmd in _SIMPLE_COMMANDS:
        return _SIMPLE_COMMANDS[cmd]()
    match cmd:
        case "Console_add":
            return m.ConsoleAdd(int(j["max_unikernels"]))
        case "Console_subscribe":
            if j.get("since") is not None:
                return m.ConsoleSubscribe(since=time_of_json(j["since"]))
            return m.ConsoleSubscribe(count=int(j["count"]))
        case "Stats_add":
            return m.StatsAdd(j["vmmdev"], int(j["pid"]),
                              tuple((t["bridge"], t["tap"]) for t in j.get("taps", [])))
        case "Unikernel_create" | "Unikernel_force_create":
            return m.UnikernelCreate(config_of_json(j["config"]), force=(cmd == "Unikernel_force_create"))
        case "Unikernel_restart":
            a = j.get("arguments")
            return m.UnikernelRestart(None if a is None else arguments_of_json(a))
        case "Unikernel_get":
            return m.UnikernelGet(int(j["compress_level"]))
        case "Policy_add":
            return m.PolicyAdd(policy_of_json(j["policy"]))
        case "Block_add":
            return m.BlockAdd(int(j["size"]))
        case "Block_set":
            return m.BlockSet(bool(j["compressed"]))
        case "Block_dump":
            return m.BlockDump(int(j["compress_level"]))
        case "Old_block_dump":
            return m.OldBlockDump(int(j["compress_level"]))
        case "Old_block_add":
            data = j.get("data_hex")
            return m.OldBlockAdd(int(j["size"]), bool(j["compressed"]),
                                 None if data is None else bytes.fromhex(data))
        case "Old_block_set":
            return m.OldBlockSet(bool(j["compressed"]), bytes.fromhex(j["data_hex"]))
    raise AlbatrossError(f"unknown command {cmd!r}")


# ----------------------------------------------------------------- replies

def success_to_json(s: m.Reply) -> J:
    d: J = {"variant": s.VARIANT}
    match s:
        case m.String(string):
            d["string"] = string
        case m.Policies(policies):
            d["policies"] = [{"name": n.to_string(), "policy": policy_to_json(p)} for n, p in policies]
        case m.UnikernelInfos(unikernels, _):
            d["unikernels"] = [{"name": n.to_string(), "info": info_to_json(i)} for n, i in unikernels]
        case m.UnikernelImage(compressed, image):
            d.update(compressed=compressed, image_hex=image.hex(), image_len=len(image))
        case m.BlockDevices(devs):
            d["block_devices"] = [{"name": n.to_string(), "size": s_, "active": a} for n, s_, a in devs]
        case m.OldBlockDeviceImage(compressed, data):
            d.update(compressed=compressed, data_hex=data.hex(), data_len=len(data))
        case m.BlockDeviceImage(compressed):
            d["compressed"] = compressed
        case m.Consoles(names):
            d["names"] = [n.to_string() for n in names]
    return d


def _name_of(s: str) -> Name:
    return Name.of_string(s)


def success_of_json(j: J) -> m.Reply:
    v = j["variant"]
    match v:
        case "Empty":
            return m.Empty()
        case "String":
            return m.String(j["string"])
        case "Policies":
            return m.Policies(tuple((_name_of(e["name"]), policy_of_json(e["policy"])) for e in j["policies"]))
        case "Unikernel_info" | "Old_unikernel_info4" | "Old_unikernel_info5":
            return m.UnikernelInfos(tuple((_name_of(e["name"]), info_of_json(e["info"]))
                                          for e in j["unikernels"]), v)
        case "Unikernel_image":
            return m.UnikernelImage(bool(j["compressed"]), _hex_field(j, "image_hex", "data_hex"))
        case "Block_devices":
            return m.BlockDevices(tuple((_name_of(e["name"]), int(e["size"]), bool(e["active"]))
                                        for e in j["block_devices"]))
        case "Old_block_device_image":
            return m.OldBlockDeviceImage(bool(j["compressed"]), _hex_field(j, "data_hex", "image_hex"))
        case "Block_device_image":
            return m.BlockDeviceImage(bool(j["compressed"]))
        case "Consoles":
            return m.Consoles(tuple(_name_of(n) for n in j["names"]))
    raise AlbatrossError(f"unknown success variant {v!r}")


# -------------------------------------------------------------------- data

def data_to_json(d: m.Data) -> J:
    match d:
        case m.ConsoleData(ts, line):
            return {"variant": "Console_data", "timestamp": time_to_json(ts), "line": _s(line),
                    "line_len": len(line)}
        case m.StatsData(stats):
            return {"variant": "Stats_data", "stats": stats_to_json(stats)}
        case m.BlockData(data):
            return {"variant": "Block_data", "data_hex": None if data is None else data.hex(),
                    "data_len": None if data is None else len(data)}
    raise AlbatrossError(f"not a data message {d!r}")


def data_of_json(j: J) -> m.Data:
    v = j["variant"]
    if v == "Console_data":
        line = bytes.fromhex(j["line_hex"]) if "line_hex" in j else _b(j["line"])
        return m.ConsoleData(time_of_json(j["timestamp"]), line)
    if v == "Stats_data":
        return m.StatsData(stats_of_json(j["stats"]))
    if v == "Block_data":
        h = j.get("data_hex")
        return m.BlockData(None if h is None else bytes.fromhex(h))
    raise AlbatrossError(f"unknown data variant {v!r}")


# ------------------------------------------------------------------- wire

def wire_to_json(w: m.Wire) -> J:
    h = w.header
    p = w.payload
    if isinstance(p, m.Cmd):
        payload: J = {"type": "command", "command": command_to_json(p)}
    elif isinstance(p, m.Reply):
        payload = {"type": "success", "success": success_to_json(p)}
    elif isinstance(p, m.Failure):
        payload = {"type": "failure", "message": p.message, "message_len": len(_b(p.message))}
    else:
        payload = {"type": "data", "data": data_to_json(p)}
    return {"header": {"version": h.version, "sequence": h.sequence, "name": h.name.to_string()},
            "payload": payload}


def wire_of_json(j: J) -> m.Wire:
    h = j["header"]
    header = m.Header(_name_of(h["name"]), int(h.get("sequence", 0)), int(h.get("version", 5)))
    p = j["payload"]
    t = p["type"]
    if t == "command":
        payload = command_of_json(p["command"])
    elif t == "success":
        payload = success_of_json(p["success"])
    elif t == "failure":
        payload = m.Failure(p["message"])
    elif t == "data":
        payload = data_of_json(p["data"])
    else:
        raise AlbatrossError(f"unknown payload type {t!r}")
    return m.Wire(header, payload)


def cert_to_json(version: int, cmd: m.Cmd) -> J:
    return {"version": version, "command": command_to_json(cmd)}


def cert_of_json(j: J) -> tuple[int, m.Cmd]:
    return int(j.get("version", 5)), command_of_json(j["command"])


def state_to_json(s: State) -> J:
    return {
        "unikernels": [{"name": n.to_string(), "config": config_to_json(c)} for n, c in s.unikernels],
        "policies": [{"name": n.to_string(), "policy": policy_to_json(p)} for n, p in s.policies],
    }


def state_of_json(j: J) -> State:
    return State(
        tuple((_name_of(e["name"]), config_of_json(e["config"])) for e in j.get("unikernels", [])),
        tuple((_name_of(e["name"]), policy_of_json(e["policy"])) for e in j.get("policies", [])),
    )


def of_json_guarded(fn, j):
    """Run a JSON reader, turning any malformation into an AlbatrossError."""
    try:
        return fn(j)
    except AlbatrossError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DecodeError(f"malformed JSON value: {e!r}") from None
