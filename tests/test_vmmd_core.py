"""The sans-I/O core of albatrossd: commands in, effects out, no processes."""

from __future__ import annotations

import zlib

import pytest

from albatross.core import (
    MAX_INT, BlockDevice, FailBehaviour, NetDevice, Policy, Ptime, UnikernelArguments, UnikernelConfig,
)
from albatross.daemons import vmmd_core as V
from albatross.daemons.vmmd_core import ExitStatus, Spawned, Vmmd
from albatross.errors import PolicyError
from albatross.policy.names import ROOT, Name
from albatross.wire import messages as m
from albatross.wire.messages import Header, Wire

from solo5_fixtures import build_image

IMAGE = build_image(devices=())
IMAGE_NET = build_image(devices=(("service", "NET_BASIC"),))
ROOT_POLICY = Policy(MAX_INT, frozenset({0, 1, 2, 3}), 4096, 1000, frozenset({"br0"}))


def N(s: str) -> Name:
    return Name.of_string(s)


def cfg(**kw) -> UnikernelConfig:
    kw.setdefault("image", IMAGE)
    return UnikernelConfig(**kw)


def core() -> Vmmd:
    c = Vmmd.create()
    c.restore_policies([], ROOT_POLICY)
    return c


def cmd(c: Vmmd, name: str, payload, seq: int = 0):
    return c.handle_command(Header(N(name), seq), payload)


def replies(effects):
    return [e.wire.payload for e in effects if isinstance(e, V.Reply)]


def only(effects, typ):
    return [e for e in effects if isinstance(e, typ)]


PID = [1000]


def spawn(c: Vmmd, name: str, config: UnikernelConfig, needs_dump: bool = True):
    """What the shell does for PrepareAndSpawn (without I/O)."""
    n = N(name)
    c.check_create(n, config)
    console = c.console_add(n)
    c.recheck(n, config)
    PID[0] += 1
    taps = tuple((f"vmmtap{i}", n.mac(net.name)) for i, net in enumerate(config.bridges))
    effects = c.created(n, config, Spawned(PID[0], taps, b"\x01" * 32, Ptime(100)), needs_dump)
    return console, effects


def run_create(c: Vmmd, name: str, config: UnikernelConfig):
    effects = cmd(c, name, m.UnikernelCreate(config))
    assert effects == [V.PrepareAndSpawn(N(name), config, True, Header(N(name)))]
    return spawn(c, name, config)


# ------------------------------------------------------------------ helpers

@pytest.mark.parametrize("status,restart", [
    (ExitStatus("exit", 0), True), (ExitStatus("exit", 2), True), (ExitStatus("exit", 255), True),
    (ExitStatus("exit", 1), False), (ExitStatus("exit", 60), False), (ExitStatus("exit", 61), False),
    (ExitStatus("exit", 62), False), (ExitStatus("exit", 63), False), (ExitStatus("exit", 64), False),
    (ExitStatus("exit", 65), True), (ExitStatus("signal", 15), False), (ExitStatus("signal", 9), False),
    (ExitStatus("stop", 19), False),
])
def test_should_restart_any_code(status, restart):
    assert V.should_restart(cfg(fail_behaviour=FailBehaviour(True)), status) is restart


def test_should_restart_code_set():
    c = cfg(fail_behaviour=FailBehaviour(True, frozenset({3, 64})))
    assert V.should_restart(c, ExitStatus("exit", 3))
    assert not V.should_restart(c, ExitStatus("exit", 4))
    assert not V.should_restart(c, ExitStatus("exit", 64))


def test_exit_status_of_returncode():
    assert ExitStatus.of_returncode(-15) == ExitStatus("signal", 15)
    assert ExitStatus.of_returncode(3) == ExitStatus("exit", 3)


def test_startup_order_stable():
    entries = [(N("a"), cfg(startup=60)), (N("b"), cfg()), (N("c"), cfg(startup=10)), (N("d"), cfg(startup=50))]
    assert [str(n) for n, _ in V.startup_order(entries)] == [":c", ":b", ":d", ":a"]


def test_bytes_of_mb():
    assert V.bytes_of_mb(2) == 2 * 1024 * 1024
    with pytest.raises(PolicyError, match="overflow"):
        V.bytes_of_mb(1 << 50)


# ------------------------------------------------------------------ start-up

def test_restore_policies_replaces_root_and_checks():
    c = Vmmd.create()
    old_root = Policy(1, frozenset({0}), 100, None, frozenset())
    sub = Policy(2, frozenset({0}), 64, None, frozenset())
    warnings = c.restore_policies([(ROOT, old_root), (N("a:"), sub)], ROOT_POLICY)
    assert "replacing stored root policy" in warnings[0]
    assert c.resources.find_policy(()) == ROOT_POLICY
    assert c.resources.find_policy(("a",)) == sub


def test_restore_policies_failure():
    c = Vmmd.create()
    big = Policy(2, frozenset({0}), 64, None, frozenset())
    small = Policy(1, frozenset({0}), 32, None, frozenset())
    with pytest.raises(PolicyError, match="policy restore error"):
        c.restore_policies([(N("a:"), small), (N("a:b:"), big)], ROOT_POLICY)


def test_init_block_devices():
    c = Vmmd.create()
    errs = c.init_block_devices([(N("data"), 10), (N("data"), 5)])
    assert len(errs) == 1 and c.resources.find_block(N("data")).size == 10


# ------------------------------------------------------------------ create

def test_create_success_effects():
    c = core()
    console, effects = run_create(c, "hello", cfg(fail_behaviour=FailBehaviour(True)))
    assert console == Wire(Header(N("hello"), 1), m.ConsoleAdd(MAX_INT))
    dumps = only(effects, V.DumpState)
    assert len(dumps) == 1 and [str(n) for n, _ in dumps[0].state.unikernels] == [":hello"]
    stats = only(effects, V.StatsMessage)
    assert stats[0].wire == Wire(Header(N("hello"), 1), m.StatsAdd("", PID[0], ()))
    assert c.running(N("hello")).state == "running"
    assert isinstance(c.waiters[N("hello")][0], V.RestartWaiter)


def test_create_no_restart_handler_without_add_name_and_quit():
    c = core()
    run_create(c, "x", cfg(add_name=False))
    assert N("x") not in c.waiters


def test_create_duplicate_running():
    c = core()
    run_create(c, "hello", cfg())
    with pytest.raises(PolicyError, match="Unikernel with same name is already running"):
        c.check_create(N("hello"), cfg())


def test_console_counter_and_limit():
    c = core()
    cmd(c, "a:", m.PolicyAdd(Policy(3, frozenset({0}), 100, None, frozenset())))
    assert c.console_add(N("a:x")).payload == m.ConsoleAdd(3)
    assert c.console_add(N("b:x")).payload == m.ConsoleAdd(0)
    assert c.console_add(N("x")).header.sequence == 3


def test_create_failed_forgets_starting_entry():
    c = core()
    c.check_create(N("x"), cfg())
    assert c.info(ROOT) == () and c.state().unikernels == ()
    c.create_failed(N("x"))
    c.check_create(N("x"), cfg())


def test_create_policy_checks():
    c = core()
    cmd(c, "a:", m.PolicyAdd(Policy(1, frozenset({0}), 64, None, frozenset({"br0"}))))
    with pytest.raises(PolicyError, match="maximum allowed memory"):
        c.check_create(N("a:x"), cfg(memory=65))
    with pytest.raises(PolicyError, match="CPUids 1 are not allowed"):
        c.check_create(N("a:x"), cfg(cpuids=frozenset({1})))
    with pytest.raises(PolicyError, match="bridges br1 not allowed"):
        c.check_create(N("a:x"), cfg(bridges=(NetDevice("br1"),)))
    spawn(c, "a:x", cfg())
    with pytest.raises(PolicyError, match=r"maximum amount of unikernels \(1\) reached"):
        c.check_create(N("a:y"), cfg())
    # no policy at the exact path: the ancestor's policy governs its whole subtree
    # (hierarchical quota; upstream checks only the exact path and accepts this)
    with pytest.raises(PolicyError, match=r"maximum amount of unikernels \(1\) reached"):
        c.check_create(N("a:b:y"), cfg(memory=100))
    # no policy on the way up: unchecked against policies, but never beyond the host
    with pytest.raises(PolicyError, match=r"memory of 10000 MB exceeds the host's memory \(4096 MB\)"):
        c.check_create(N("b:y"), cfg(memory=10000))
    spawn(c, "b:y", cfg(memory=100))


def test_create_block_checks_and_activity():
    c = core()
    conf = cfg(block_devices=(BlockDevice("storage", "data"),))
    with pytest.raises(PolicyError, match="block device :data not found"):
        c.check_create(N("x"), conf)
    cmd(c, "data", m.BlockAdd(10))
    c.block_done(V.BlockIO("create", N("data"), 10, Header(N("data"))), None)
    spawn(c, "x", conf)
    assert c.resources.find_block(N("data")).active
    with pytest.raises(PolicyError, match="already in use"):
        c.check_create(N("y"), conf)
    c.on_exit(N("x"), ExitStatus("exit", 0))
    assert not c.resources.find_block(N("data")).active


# ------------------------------------------------------------------ info / get

def test_info_label_and_path():
    c = core()
    conf = cfg(bridges=(NetDevice("service", "br0"),), block_devices=(BlockDevice("storage", "d"),))
    cmd(c, "a:d", m.BlockAdd(5))
    c.block_done(V.BlockIO("create", N("a:d"), 5, Header(N("a:d"))), None)
    spawn(c, "a:x", conf)
    spawn(c, "b", cfg())
    [(n, info)] = replies(cmd(c, "a:x", m.UnikernelInfoCmd()))[0].unikernels
    assert n == N("a:x") and info.block_devices[0].size == 5 and info.block_devices[0].sector_size == 512
    assert info.bridges[0].mac == N("a:x").mac("service") and info.bridges[0].host_device == "br0"
    assert info.digest == b"\x01" * 32 and info.started == Ptime(100)
    listing = replies(cmd(c, "a:", m.UnikernelInfoCmd()))[0].unikernels
    assert [str(n) for n, _ in listing] == [":x"]
    assert listing[0][1].block_devices[0].size == 0  # upstream quirk: relative lookup
    allv = replies(cmd(c, ":", m.OldUnikernelInfo5()))[0]
    assert allv.variant == "Old_unikernel_info5" and {str(n) for n, _ in allv.unikernels} == {"a:x", ":b"}
    assert replies(cmd(c, "nope", m.UnikernelInfoCmd()))[0].unikernels == ()


@pytest.mark.parametrize("stored_compressed,level,exp_compressed", [
    (True, 3, True), (True, 0, False), (False, 0, False), (False, 9, True)])
def test_get_matrix(stored_compressed, level, exp_compressed):
    c = core()
    image = zlib.compress(IMAGE) if stored_compressed else IMAGE
    spawn(c, "x", cfg(image=image, compressed=stored_compressed))
    [r] = replies(cmd(c, "x", m.UnikernelGet(level)))
    assert r.compressed is exp_compressed
    got = zlib.decompress(r.image) if r.compressed else r.image
    assert got == IMAGE
    if stored_compressed and level > 0:
        assert r.image == image


def test_get_unknown():
    assert replies(cmd(core(), "x", m.UnikernelGet(0))) == [m.Failure("get: no unikernel found")]


# ------------------------------------------------------------------ destroy

def test_destroy_running_waits_then_dumps():
    c = core()
    run_create(c, "x", cfg(fail_behaviour=FailBehaviour(True)))
    effects = cmd(c, "x", m.UnikernelDestroy())
    kill, wait = effects
    assert kill == V.Kill(N("x"), PID[0]) and wait.then == "destroy"
    assert c.running(N("x")).state == "stopping"
    exit_effects = c.on_exit(N("x"), ExitStatus("exit", 0))  # restart-worthy, but destroy wins
    assert only(exit_effects, V.Wake) == [V.Wake(wait.waiter, ExitStatus("exit", 0))]
    assert not only(exit_effects, V.RestartDecision) and not only(exit_effects, V.DumpState)
    assert only(exit_effects, V.Cleanup)[0].name == N("x")
    assert isinstance(only(exit_effects, V.StatsMessage)[0].wire.payload, m.StatsRemove)
    done = c.destroy_done(Header(N("x")), ExitStatus("exit", 0))
    assert only(done, V.DumpState)[0].state.unikernels == ()
    assert replies(done) == [m.String("destroyed unikernel")]
    # upstream quirk: the name stays in the restarting set
    assert replies(cmd(c, "x", m.UnikernelDestroy())) == [m.String("destroyed: removed from restarting")]
    assert replies(cmd(c, "x", m.UnikernelDestroy())) == [m.Failure("destroy: not found")]


def test_destroy_twice_wakes_both():
    c = core()
    spawn(c, "x", cfg())
    w1 = cmd(c, "x", m.UnikernelDestroy())[1].waiter
    w2 = cmd(c, "x", m.UnikernelDestroy())[1].waiter
    wakes = only(c.on_exit(N("x"), ExitStatus("signal", 15)), V.Wake)
    assert {w.waiter for w in wakes} == {w1, w2}


def test_destroy_during_restart_window():
    c = core()
    spawn(c, "x", cfg(fail_behaviour=FailBehaviour(True)))
    [decision] = only(c.on_exit(N("x"), ExitStatus("exit", 0)), V.RestartDecision)
    effects = cmd(c, "x", m.UnikernelDestroy())
    assert replies(effects) == [m.String("destroyed: removed from restarting")]
    assert only(effects, V.DumpState)
    assert c.decide_restart(decision.name, decision.config, decision.status) == [c.dump()]


# ------------------------------------------------------------------ exits / restart-on-failure

def test_exit_without_waiter_dumps():
    c = core()
    spawn(c, "x", cfg(add_name=False))
    effects = c.on_exit(N("x"), ExitStatus("exit", 0))
    assert only(effects, V.DumpState)[0].state.unikernels == ()
    assert c.resources.find_unikernel(N("x")) is None


def test_exit_during_shutdown_does_not_dump():
    c = core()
    spawn(c, "x", cfg(add_name=False))
    spawn(c, "y", cfg())
    effects, idents = c.shutdown()
    assert {e.name for e in effects} == {N("x"), N("y")} and len(idents) == 2
    ex = c.on_exit(N("x"), ExitStatus("signal", 15))
    assert not only(ex, V.DumpState) and only(ex, V.Wake)
    assert not only(c.on_exit(N("y"), ExitStatus("exit", 1)), V.RestartDecision)


@pytest.mark.parametrize("code,restarts", [(0, True), (2, True), (1, False), (64, False), (63, False)])
def test_restart_on_failure(code, restarts):
    c = core()
    c.restart_policy = V.RestartPolicy.immediate()  # upstream
    conf = cfg(fail_behaviour=FailBehaviour(True), add_name=False)
    spawn(c, "x", conf)
    [d] = only(c.on_exit(N("x"), ExitStatus("exit", code)), V.RestartDecision)
    out = c.decide_restart(d.name, d.config, d.status)
    if restarts:
        assert out == [V.PrepareAndSpawn(N("x"), conf, False, None)]
    else:
        assert out == [c.dump()]


def test_exit_64_retry_without_name():
    c = core()
    conf = cfg(add_name=True)
    spawn(c, "x", conf)
    [d] = only(c.on_exit(N("x"), ExitStatus("exit", 64)), V.RestartDecision)
    [again] = c.decide_restart(d.name, d.config, d.status)
    assert again.config.add_name is False and again.needs_dump is True
    # the retried one has no handler any more (quit, no add_name)
    spawn(c, "x", again.config)
    assert N("x") not in c.waiters


def test_exit_64_with_restart_policy_also_retries_without_name():
    c = core()
    conf = cfg(add_name=True, fail_behaviour=FailBehaviour(True, frozenset({5})))
    spawn(c, "x", conf)
    [d] = only(c.on_exit(N("x"), ExitStatus("exit", 64)), V.RestartDecision)
    [again] = c.decide_restart(d.name, d.config, d.status)
    assert again.config.add_name is False


def test_restart_created_without_dump():
    c = core()
    conf = cfg(fail_behaviour=FailBehaviour(True))
    _, effects = spawn(c, "x", conf, needs_dump=False)
    assert not only(effects, V.DumpState)


# ------------------------------------------------------------------ force-create / restart

def test_force_create_not_running_is_create():
    c = core()
    conf = cfg()
    assert cmd(c, "x", m.UnikernelCreate(conf, force=True)) == [V.PrepareAndSpawn(N("x"), conf, True, Header(N("x")))]


def test_force_create_checks_without_old():
    c = core()
    cmd(c, "a:", m.PolicyAdd(Policy(1, frozenset({0}), 64, None, frozenset())))
    spawn(c, "a:x", cfg(memory=64))
    effects = cmd(c, "a:x", m.UnikernelCreate(cfg(memory=64), force=True))
    assert isinstance(effects[0], V.Kill) and isinstance(effects[1].then, V.PrepareAndSpawn)
    bad = cmd(c, "a:x", m.UnikernelCreate(cfg(memory=65), force=True))
    assert isinstance(replies(bad)[0], m.Failure)


def test_restart_with_arguments():
    c = core()
    spawn(c, "x", cfg(image=zlib.compress(IMAGE), compressed=True))
    args = UnikernelArguments(memory=64, argv=("a",), numcpus=2, linux_boot_partition="p")
    kill, wait = cmd(c, "x", m.UnikernelRestart(args))
    new = wait.then.config
    assert (new.memory, new.argv, new.numcpus, new.linux_boot_partition) == (64, ("a",), 2, "p")
    assert new.compressed and new.image == zlib.compress(IMAGE)


def test_restart_without_arguments_keeps_config():
    c = core()
    conf = cfg(memory=40)
    spawn(c, "x", conf)
    _, wait = cmd(c, "x", m.UnikernelRestart(None))
    assert wait.then.config == conf


def test_restart_manifest_mismatch():
    c = core()
    spawn(c, "x", cfg())
    args = UnikernelArguments(bridges=(NetDevice("service"),))
    [r] = replies(cmd(c, "x", m.UnikernelRestart(args)))
    assert "does not match with the manifest" in r.message
    assert c.running(N("x")).state == "running"


def test_restart_not_running():
    assert replies(cmd(core(), "x", m.UnikernelRestart(None))) == [m.Failure("destroy: not found")]


# ------------------------------------------------------------------ policies

POL = Policy(2, frozenset({0}), 128, 100, frozenset({"br0"}))


def test_policy_add_idempotent_and_loop():
    c = core()
    effects = cmd(c, "a:", m.PolicyAdd(POL))
    assert replies(effects) == [m.String("added policy")] and only(effects, V.Loop) and only(effects, V.DumpState)
    again = cmd(c, "a:", m.PolicyAdd(POL))
    assert replies(again) == [m.String("no modification of policy")] and only(again, V.Loop)
    assert not only(again, V.DumpState)


def test_policy_add_errors_close():
    c = core()
    cmd(c, "a:", m.PolicyAdd(POL))
    effects = cmd(c, "a:b:", m.PolicyAdd(Policy(3, frozenset({0}), 128, 100, frozenset())))
    assert replies(effects) == [m.Failure("policy above allows 2 unikernels, which is fewer than 3")]
    assert not only(effects, V.Loop)


def test_policy_remove_and_info():
    c = core()
    cmd(c, "a:", m.PolicyAdd(POL))
    cmd(c, "a:b:", m.PolicyAdd(POL))
    [r] = replies(cmd(c, "a:", m.PolicyInfoCmd()))
    assert [str(n) for n, _ in r.policies] == [":", "b:"]
    effects = cmd(c, "a:b:", m.PolicyRemove())
    assert replies(effects) == [m.String("removed policy")] and only(effects, V.DumpState)
    assert replies(cmd(c, "a:b:", m.PolicyRemove())) == [m.Failure("unknown policy")]


def test_policy_state_includes_root():
    c = core()
    assert [str(n) for n, _ in c.state().policies] == [":"]


# ------------------------------------------------------------------ block devices

def block(c, name, payload):
    return cmd(c, name, payload)


def test_block_add_remove():
    c = core()
    [io] = block(c, "d", m.BlockAdd(4))
    assert io.op == "create" and io.size == 4
    assert replies(c.block_done(io, None)) == [m.String("added block device")]
    assert replies(block(c, "d", m.BlockAdd(4))) == [m.Failure("block device with same name already exists")]
    [io] = block(c, "d", m.BlockRemove())
    assert replies(c.block_done(io, None)) == [m.String("removed block")]
    assert replies(block(c, "d", m.BlockRemove())) == [m.Failure("remove block: not found")]


def test_block_add_io_failure_leaves_nothing():
    c = core()
    [io] = block(c, "d", m.BlockAdd(4))
    assert replies(c.block_done(io, "file already exists")) == [m.Failure("file already exists")]
    assert c.resources.find_block(N("d")) is None


def test_block_policy_limit():
    c = core()
    cmd(c, "a:", m.PolicyAdd(Policy(2, frozenset({0}), 128, None, frozenset())))
    assert replies(block(c, "a:d", m.BlockAdd(1))) == [m.Failure("no block devices are allowed by policy")]
    cmd(c, "b:", m.PolicyAdd(POL))
    c.block_done(block(c, "b:d", m.BlockAdd(60))[0], None)
    [f] = replies(block(c, "b:e", m.BlockAdd(50)))
    assert f.message == "block device policy limit of 100 MB (used 60 MB) would be exceeded by the request (50 MB)"


def test_block_in_use_errors():
    c = core()
    c.block_done(block(c, "d", m.BlockAdd(4))[0], None)
    spawn(c, "x", cfg(block_devices=(BlockDevice("storage", "d"),)))
    assert replies(block(c, "d", m.BlockRemove())) == [m.Failure("remove block: is in use")]
    assert replies(block(c, "d", m.BlockSet(False))) == [m.Failure("set block: is in use")]
    assert replies(block(c, "d", m.BlockDump(0))) == [m.Failure("dump block: is in use")]
    assert replies(block(c, "d", m.OldBlockDump(0))) == [m.Failure("dump block: is in use")]
    assert replies(block(c, "e", m.BlockSet(False))) == [m.Failure("set block: not found")]
    assert replies(block(c, "e", m.BlockDump(0))) == [m.Failure("dump block: not found")]


def test_block_info():
    c = core()
    c.block_done(block(c, "a:d", m.BlockAdd(4))[0], None)
    c.block_done(block(c, "a:e", m.BlockAdd(2))[0], None)
    [r] = replies(block(c, "a:", m.BlockInfoCmd()))
    assert [(str(n), s, a) for n, s, a in r.block_devices] == [(":e", 2, False), (":d", 4, False)]
    [r] = replies(block(c, "a:d", m.BlockInfoCmd()))
    assert r.block_devices == ((N("a:d"), 4, False),)


def test_old_block_commands():
    c = core()
    data = b"x" * 100
    [io] = block(c, "d", m.OldBlockAdd(1, True, zlib.compress(data)))
    assert io.data == data
    c.block_done(io, None)
    big = b"y" * (1024 * 1024 + 1)
    assert replies(block(c, "d", m.OldBlockSet(False, big))) == [m.Failure("data exceeds block size")]
    [io] = block(c, "d", m.OldBlockSet(False, data))
    assert io.op == "write" and replies(c.block_done(io, None)) == [m.String("set block device")]
    [io] = block(c, "d", m.OldBlockDump(5))
    [r] = replies(c.block_done(io, None, data))
    assert r.compressed and zlib.decompress(r.data) == data
    [io] = block(c, "d", m.OldBlockDump(0))
    assert replies(c.block_done(io, None, data)) == [m.OldBlockDeviceImage(False, data)]


def test_block_stream_effects():
    c = core()
    c.block_done(block(c, "d", m.BlockAdd(1))[0], None)
    [io] = block(c, "d", m.BlockSet(True))
    assert (io.op, io.compressed, io.size) == ("recv", True, 1)
    [io] = block(c, "d", m.BlockDump(3))
    assert (io.op, io.level) == ("send", 3)


# ------------------------------------------------------------------ stats / unknown

def test_stats_initial():
    c = core()
    spawn(c, "a", cfg(bridges=(NetDevice("service", "br0"),), image=IMAGE_NET))
    spawn(c, "b", cfg())
    [adopt] = cmd(c, ":", m.StatsInitial(), seq=7)
    assert adopt.reply == Wire(Header(ROOT, 7), m.Empty())
    seqs = [(str(w.header.name), w.header.sequence) for w in adopt.messages]
    assert seqs == [(":b", 9), (":a", 8)]
    assert adopt.messages[1].payload.taps == (("service", "vmmtap0"),)
    assert c.stats_counter == 10


@pytest.mark.parametrize("payload", [m.ConsoleSubscribe(count=3), m.StatsAdd("", 1), m.StatsSubscribe(),
                                     m.ConsoleAdd(1), m.String("hi"), m.Failure("x")])
def test_unknown_command(payload):
    assert replies(cmd(core(), "x", payload)) == [m.Failure("unknown command")]


def test_dump_excludes_starting_and_includes_policies():
    c = core()
    spawn(c, "b", cfg())
    c.check_create(N("a"), cfg())
    st = c.state()
    assert [str(n) for n, _ in st.unikernels] == [":b"]


# ------------------------------------------------------------------ failed state writes (issue 11)

def test_dump_failed_create_rolls_back():
    c = core()
    config = cfg(fail_behaviour=FailBehaviour(True), bridges=(NetDevice("service", "br0"),), image=IMAGE_NET)
    n = N("x")
    c.check_create(n, config)
    effects = c.created(n, config, Spawned(4242, (("vmmtap0", b"\x02" * 6),), b"d" * 32, Ptime(1)), True,
                        Header(n, 7))
    [dump] = only(effects, V.DumpState)
    assert dump.undo == V.Undo("create", n, Header(n, 7))
    out = c.dump_failed(dump, "No space left on device")
    assert out[0] == V.Kill(n, 4242)
    assert isinstance(out[1], V.RollBack) and "No space left on device" in out[1].message
    assert "the unikernel was stopped" in out[1].message
    assert c.vms.get(n).state == "stopping" and n not in c.waiters  # no restart after the kill
    assert c.rolled_back(n) == [V.Cleanup(n, "solo5", ("vmmtap0",), b"d" * 32)]
    assert c.vms.get(n) is None and c.resources.find_unikernel(n) is None
    assert c.state().unikernels == ()
    # the name can be created again
    c.check_create(n, config)


def test_dump_failed_without_waiting_command_keeps_running():
    c = core()
    _, effects = spawn(c, "r", cfg())  # a restore: nobody waits for the reply
    [dump] = only(effects, V.DumpState)
    assert c.dump_failed(dump, "Read-only file system") is None  # carry on (announce to stats)
    assert c.running(N("r")).state == "running"
    assert c.dump_failed(c.dump(), "Read-only file system") is None


def test_dump_failed_policy_add_undone():
    c = core()
    h = Header(N("a:"), 3)
    effects = c.handle_command(h, m.PolicyAdd(POL))
    [dump] = only(effects, V.DumpState)
    out = c.dump_failed(dump, "No space left on device")
    assert out == [V.failure(h, "policy not changed: failed to write the state: No space left on device"), V.Loop()]
    assert c.resources.find_policy(("a",)) is None
    # replacing a policy: the previous one comes back
    assert c.dump_failed(only(cmd(c, "a:", m.PolicyAdd(POL)), V.DumpState)[0], "x") == [
        V.failure(Header(N("a:")), "policy not changed: failed to write the state: x"), V.Loop()]
    cmd(c, "a:", m.PolicyAdd(POL))
    other = Policy(1, frozenset({0}), 64, None, frozenset())
    c.dump_failed(only(cmd(c, "a:", m.PolicyAdd(other)), V.DumpState)[0], "x")
    assert c.resources.find_policy(("a",)) == POL


def test_dump_failed_policy_remove_undone():
    c = core()
    cmd(c, "a:", m.PolicyAdd(POL))
    [dump] = only(cmd(c, "a:", m.PolicyRemove()), V.DumpState)
    out = c.dump_failed(dump, "Read-only file system")
    assert replies(out) == [m.Failure("policy not changed: failed to write the state: Read-only file system")]
    assert not only(out, V.Loop)
    assert c.resources.find_policy(("a",)) == POL


def test_dump_failed_destroy_tombstone():
    c = core()
    run_create(c, "d", cfg())
    n = N("d")
    h = Header(n, 9)
    [_, wait] = c.handle_command(h, m.UnikernelDestroy())
    c.on_exit(n, ExitStatus("signal", 15))
    effects = c.destroy_done(wait.reply, ExitStatus("signal", 15))
    [dump] = only(effects, V.DumpState)
    assert dump.state.unikernels == ()
    [tomb] = c.dump_failed(dump, "No space left on device")
    assert tomb == V.Tombstone(n, h, "destroyed unikernel", "No space left on device")
    [ok] = replies(c.tombstone_done(tomb, "/db/state.destroyed.:d", None))
    assert ok == m.Failure("destroyed unikernel, but failed to write the state: No space left on device; "
                           "it will not be restored at the next start (tombstone /db/state.destroyed.:d)")
    [bad] = replies(c.tombstone_done(tomb, None, "/db/state.destroyed.:d: Read-only file system"))
    assert "writing a tombstone failed too" in bad.message and "it will be restored at the next start" in bad.message


def test_dump_failed_destroy_of_waiter():
    c = core()
    n = N("w")
    c._register_restart(n, cfg())
    effects = c.handle_command(Header(n), m.UnikernelDestroy())
    [dump] = only(effects, V.DumpState)
    [tomb] = c.dump_failed(dump, "e")
    assert tomb.text == "destroyed: removed waiter" and tomb.name == n
# ------------------------------------------------------------------ restart back-off (beyond upstream)

BACKOFF = V.RestartPolicy(delay=1.0, max_delay=8.0, reset_after=60.0, max_failures=6, window=600.0)


def crash(c: Vmmd, name: str, conf: UnikernelConfig, now: float, ran: float, code: int = 2):
    """Spawn ``name`` at ``now - ran``, let it exit with ``code`` at ``now``: the decision's effects."""
    n = N(name)
    c.check_create(n, conf)
    PID[0] += 1
    c.created(n, conf, Spawned(PID[0], (), b"\x01" * 32, Ptime(100), clock=now - ran), False)
    [d] = only(c.on_exit(n, ExitStatus("exit", code)), V.RestartDecision)
    assert d.started == now - ran
    return c.decide_restart(d.name, d.config, d.status, now=now, started=d.started)


def restart_conf() -> UnikernelConfig:
    return cfg(fail_behaviour=FailBehaviour(True), add_name=False)


def test_backoff_doubles_up_to_the_maximum():
    c = core()
    c.restart_policy = V.RestartPolicy(delay=1.0, max_delay=8.0, max_failures=0)
    conf, now, delays = restart_conf(), 1000.0, []
    for _ in range(6):
        [sched] = crash(c, "x", conf, now, ran=0.1)
        assert isinstance(sched, V.ScheduleRestart)
        delays.append(sched.delay)
        assert c.restart_due(N("x"), sched.token) == [V.PrepareAndSpawn(N("x"), conf, False, None)]
        now += sched.delay + 0.1
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_reset_after_a_long_run():
    c = core()
    c.restart_policy = BACKOFF
    conf = restart_conf()
    [s1] = crash(c, "x", conf, 1000.0, ran=0.1)
    c.restart_due(N("x"), s1.token)
    [s2] = crash(c, "x", conf, 1002.0, ran=0.5)
    assert (s1.delay, s2.delay) == (1.0, 2.0)
    c.restart_due(N("x"), s2.token)
    # ran for 60 s: the failures before are forgotten
    [s3] = crash(c, "x", conf, 1070.0, ran=60.0)
    assert s3.delay == 1.0


def test_backoff_window_forgets_old_failures():
    c = core()
    c.restart_policy = V.RestartPolicy(delay=1.0, max_delay=1.0, reset_after=1e9, max_failures=3, window=100.0)
    conf = restart_conf()
    for now in (0.0, 10.0, 150.0, 160.0):  # never 3 within 100 s
        [s] = crash(c, "x", conf, now, ran=1.0)
        assert isinstance(s, V.ScheduleRestart)
        c.restart_due(N("x"), s.token)
    assert crash(c, "x", conf, 170.0, ran=1.0) == []  # 150, 160, 170: given up
    assert N("x") in c.failed


def test_give_up_marks_failed_keeps_state_and_frees_resources():
    c = core()
    c.restart_policy = BACKOFF
    conf, now = restart_conf(), 0.0
    for i in range(5):
        [s] = crash(c, "x", conf, now, ran=0.1)
        assert s.delay == min(8.0, 2.0 ** i)
        assert N("x") in c.pending and c.info(N("x:")) == ()
        c.restart_due(N("x"), s.token)
        now += 20
    assert crash(c, "x", conf, now, ran=0.1) == []
    f = c.failed[N("x")]
    assert (f.failures, f.status) == (6, ExitStatus("exit", 2))
    assert N("x") not in c.pending and c.resources.find_unikernel(N("x")) is None
    # still deployed (the state keeps it), but not listed as running; by name: the reason
    assert [n for n, _ in c.state().unikernels] == [N("x")]
    assert c.info(ROOT) == ()
    [fail] = replies(cmd(c, "x", m.UnikernelInfoCmd()))
    assert isinstance(fail, m.Failure) and "failed: it exited 6 times within 600 s (last with exit 2)" in fail.message
    # a plain create is refused, destroy removes it
    [fail] = replies(cmd(c, "x", m.UnikernelCreate(conf)))
    assert "marked failed" in fail.message
    effects = cmd(c, "x", m.UnikernelDestroy())
    assert replies(effects) == [m.String("destroyed: removed failed unikernel")]
    assert only(effects, V.DumpState)[0].state.unikernels == ()


def test_restart_command_retries_a_failed_unikernel():
    c = core()
    c.restart_policy = V.RestartPolicy(delay=1.0, max_failures=1)
    conf = restart_conf()
    assert crash(c, "x", conf, 5.0, ran=0.1) == []
    effects = cmd(c, "x", m.UnikernelRestart(None))
    assert effects == [V.PrepareAndSpawn(N("x"), conf, True, Header(N("x")))]
    assert not c.failed


def test_destroy_during_backoff_cancels_the_restart():
    c = core()
    c.restart_policy = BACKOFF
    conf = restart_conf()
    [s] = crash(c, "x", conf, 0.0, ran=0.1)
    assert [n for n, _ in c.state().unikernels] == [N("x")]  # a dump meanwhile keeps it
    effects = cmd(c, "x", m.UnikernelDestroy())
    assert replies(effects) == [m.String("destroyed: removed from restarting")]
    assert only(effects, V.DumpState)[0].state.unikernels == ()
    assert c.restart_due(N("x"), s.token) == []
    # a new crash loop of the same name starts from scratch; the old timer stays void
    [s2] = crash(c, "x", conf, 1.0, ran=0.1)
    assert s2.delay == 1.0 and s2.token != s.token
    assert c.restart_due(N("x"), s.token) == []
    assert c.restart_due(N("x"), s2.token) == [V.PrepareAndSpawn(N("x"), conf, False, None)]


def test_force_create_replaces_a_pending_restart():
    c = core()
    c.restart_policy = BACKOFF
    conf = restart_conf()
    [s] = crash(c, "x", conf, 0.0, ran=0.1)
    [fail] = replies(cmd(c, "x", m.UnikernelCreate(conf)))
    assert "waiting to be restarted" in fail.message
    other = cfg(memory=64)
    assert cmd(c, "x", m.UnikernelCreate(other, force=True)) == [
        V.PrepareAndSpawn(N("x"), other, True, Header(N("x")))]
    assert c.restart_due(N("x"), s.token) == []


def test_immediate_policy_is_upstream():
    c = core()
    c.restart_policy = V.RestartPolicy.immediate()
    conf = restart_conf()
    for i in range(50):
        assert crash(c, "x", conf, float(i), ran=0.0) == [V.PrepareAndSpawn(N("x"), conf, False, None)]


def test_failed_restart_create_is_backed_off():
    c = core()
    c.restart_policy = BACKOFF
    conf = restart_conf()
    [s] = crash(c, "x", conf, 0.0, ran=0.1)
    c.restart_due(N("x"), s.token)
    [s2] = c.restart_failed(N("x"), conf, "interface br9 does not exist", now=1.5)
    assert isinstance(s2, V.ScheduleRestart) and s2.delay == 2.0
    c.restart_policy = V.RestartPolicy(max_failures=3)
    c.restart_due(N("x"), s2.token)
    assert c.restart_failed(N("x"), conf, "interface br9 does not exist", now=5.0) == []
    assert "(last restart failed: interface br9 does not exist)" in c.failed[N("x")].describe(N("x"))
    # without restart-on-fail (the exit-64 retry failed): just gone
    assert c.restart_failed(N("y"), cfg(), "console failed", now=6.0) == [c.dump()]


# ------------------------------------------------------------------ truthful commands

@pytest.mark.parametrize("config,message", [
    (cfg(memory=0), "memory must be at least 1 MB"),
    (cfg(memory=-5), "memory must be at least 1 MB"),
    (cfg(memory=1 << 62), "is absurd"),
    (cfg(memory=8192), "exceeds the host's memory"),
    (cfg(cpuids=frozenset({-1})), "invalid CPUid"),
    (cfg(cpuids=frozenset({7})), "CPUid(s) 7 do not exist on this host"),
    (cfg(cpuids=frozenset()), "CPUids may not be empty"),
    (cfg(block_devices=(BlockDevice("storage", "a:b"),)), "is not a name"),
    (cfg(argv=("a\0b",)), "NUL byte"),
])
def test_create_refuses_invalid_values(config, message):
    c = core()
    for name in ("x", "a:b:x"):  # with the root policy, and where no policy applies
        [fail] = replies(cmd(c, name, m.UnikernelCreate(config)))
        assert isinstance(fail, m.Failure) and message in fail.message, fail
        [fail] = replies(cmd(c, name, m.UnikernelCreate(config, force=True)))
        assert message in fail.message
    assert not c.vms.items()


def test_create_of_a_path_refused():
    c = core()
    [fail] = replies(cmd(c, "a:", m.UnikernelCreate(cfg())))
    assert fail.message == "a: is a path, not a unikernel name (drop the trailing ':')"
    [fail] = replies(cmd(c, "a:", m.BlockAdd(10)))
    assert "is a path, not a block device name" in fail.message


def test_restart_with_invalid_arguments_refused():
    c = core()
    spawn(c, "x", cfg())
    args = UnikernelArguments(cpuids=frozenset({0}), memory=0)
    [fail] = replies(cmd(c, "x", m.UnikernelRestart(args)))
    assert "memory must be at least 1 MB" in fail.message
    assert c.running(N("x")).state == "running"


@pytest.mark.parametrize("size", [0, -1, 1 << 40])
def test_block_add_refuses_bad_sizes(size):
    c = core()
    effects = cmd(c, "data", m.BlockAdd(size))
    [fail] = replies(effects)
    assert "block device size" in fail.message and not only(effects, V.BlockIO)


def test_remove_root_policy_refused():
    c = core()
    effects = c.handle_command(Header(ROOT), m.PolicyRemove())
    [fail] = replies(effects)
    assert "refusing to remove the root policy" in fail.message
    assert c.resources.find_policy(()) == ROOT_POLICY and not only(effects, V.DumpState)


def test_policy_with_negative_values_refused():
    c = core()
    [fail] = replies(cmd(c, "a:", m.PolicyAdd(Policy(1, frozenset({0}), -5, None, frozenset()))))
    assert "negative memory" in fail.message
    assert c.resources.find_policy(("a",)) is None
