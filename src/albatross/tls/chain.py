"""Client certificate chains: x509 validation and albatross processing,
and blocking TLS 1.3 streams over pyOpenSSL.

* :func:`validate_chain` checks a list ``[leaf; intermediates...]`` against
  trust anchors like upstream's ocaml-x509 ``chain_of_trust`` authenticator
  (certificates.md §3.2): OpenSSL (pyOpenSSL's ``X509StoreContext``) builds
  the path and checks signatures, validity, basicConstraints and pathLen;
  :func:`check_path_cert` adds the ocaml-x509 rules OpenSSL does not
  enforce (keyCertSign on issuers, their extKeyUsage, cA=FALSE on leaves,
  SHA-2/Ed25519 signatures only, RSA >= 1024 bits).  The TLS endpoint runs
  the same per-certificate checks from its verify callback.
* :func:`process_chain` is ``Vmm_tls.handle`` (§3.3): name from the CNs,
  policies deepest first, the leaf's command and the allow-list.
* :class:`TlsStream` is a TLS connection on a non-blocking socket with
  deadlines, so that a slow peer only ever blocks its own thread.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from OpenSSL import SSL, crypto

from ..core import Policy
from ..errors import AlbatrossError, NameError_
from ..policy.names import Name, label_of_string
from ..wire import messages as m
from ..wire.framing import DEFAULT_MAX_SIZE, END
from . import pki

log = logging.getLogger("albatross.tls")

MAX_CHAIN = 10


class ChainError(AlbatrossError):
    """A client chain that does not validate or carries no usable command."""


# ------------------------------------------------------------ x509 checks

_ISSUER_CRITICAL_OK = {ExtensionOID.KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.NAME_CONSTRAINTS}


def _describe(cert: x509.Certificate) -> str:
    cn = pki.subject_cn(cert)
    return f"CN={cn}" if cn is not None else "<no CN>"


def _ext(exts: x509.Extensions, oid):
    try:
        return exts.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def check_path_cert(cert: x509.Certificate, position: str, tls_client: bool = False) -> None:
    """ocaml-x509 rules on one certificate of a validated path.

    ``position``: "leaf" (first), "issuer" (further up, not the anchor).
    ``tls_client``: the TLS server's extra checks on a client leaf
    (keyUsage digitalSignature, extKeyUsage clientAuth when present).
    """
    who = _describe(cert)
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 1024:
        raise ChainError(f"{who}: RSA key of {pub.key_size} bits is too small (minimum 1024)")
    if not pki.allowed_signature(cert):
        raise ChainError(f"{who}: signature algorithm not allowed (SHA-2 or Ed25519 required)")
    try:
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension) as e:
        raise ChainError(f"{who}: malformed extensions: {e}") from None
    bc = _ext(exts, ExtensionOID.BASIC_CONSTRAINTS)
    ku = _ext(exts, ExtensionOID.KEY_USAGE)
    eku = _ext(exts, ExtensionOID.EXTENDED_KEY_USAGE)
    if position == "leaf":
        if bc is not None and bc.value.ca and not pki.is_self_signed(cert):
            raise ChainError(f"{who}: leaf certificate is a CA (basicConstraints cA=TRUE)")
        if _ext(exts, ExtensionOID.NAME_CONSTRAINTS) is not None:
            raise ChainError(f"{who}: leaf certificate with name constraints")
        if tls_client:
            if ku is not None and not ku.value.digital_signature:
                raise ChainError(f"{who}: keyUsage lacks digitalSignature")
            if eku is not None and not ({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                        & set(eku.value)):
                raise ChainError(f"{who}: extKeyUsage lacks clientAuth")
        return
    if bc is None or not bc.value.ca:
        raise ChainError(f"{who}: issuer is not a CA (basicConstraints cA=TRUE required)")
    if ku is None or not ku.value.key_cert_sign:
        raise ChainError(f"{who}: issuer keyUsage lacks keyCertSign")
    if eku is not None and not ({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                & set(eku.value)):
        raise ChainError(f"{who}: issuer extKeyUsage lacks serverAuth/anyExtendedKeyUsage")
    for e in exts:
        if e.critical and e.oid not in _ISSUER_CRITICAL_OK:
            raise ChainError(f"{who}: unsupported critical extension {e.oid.dotted_string} in issuer")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def anchor_store(anchors: list[x509.Certificate]) -> crypto.X509Store:
    store = crypto.X509Store()
    for a in anchors:
        store.add_cert(crypto.X509.from_cryptography(a))
    # ocaml-x509 accepts any certificate as trust anchor, self-signed or not
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return store


def _openssl_path(certs: list[x509.Certificate], anchors: list[x509.Certificate]) -> list[x509.Certificate]:
    ctx = crypto.X509StoreContext(
        anchor_store(anchors), crypto.X509.from_cryptography(certs[0]),
        [crypto.X509.from_cryptography(c) for c in certs[1:]])
    try:
        return [c.to_cryptography() for c in ctx.get_verified_chain()]
    except crypto.X509StoreContextError as e:
        raise ChainError(f"certificate chain validation failed: {e}") from None


MAX_CANDIDATE_PATHS = 16


def candidate_paths(certs: list[x509.Certificate], anchors: list[x509.Certificate],
                    limit: int = MAX_CANDIDATE_PATHS) -> list[tuple[list[x509.Certificate], x509.Certificate]]:
    """Every (intermediates, anchor) an issuer-by-name walk from the leaf can
    take (ocaml-x509 tries each certificate whose subject matches, where
    OpenSSL picks the first): at most ``limit``, shortest first."""
    leaf, pool = certs[0], certs[1:]
    found: list[tuple[list[x509.Certificate], x509.Certificate]] = []
    frontier: list[tuple[x509.Certificate, list[x509.Certificate]]] = [(leaf, [])]
    while frontier and len(found) < limit:
        nxt = []
        for cert, used in frontier:
            for a in anchors:
                if a.subject == cert.issuer and len(found) < limit:
                    found.append((used, a))
            if len(used) + 2 >= MAX_CHAIN or pki.is_self_signed(cert):
                continue
            nxt += [(c, used + [c]) for c in pool
                    if c.subject == cert.issuer and all(c is not u for u in used) and c is not cert]
        frontier = nxt[:limit]
    return found


def validate_chain(certs: list[x509.Certificate], anchors: list[x509.Certificate],
                   tls_client: bool = False) -> list[x509.Certificate]:
    """Validate ``certs`` (leaf first) against ``anchors`` now.

    Returns the validated path, leaf first, without the trust anchor unless
    it was part of ``certs`` (ocaml-x509's result).  Raises ChainError.
    When several anchors or sent certificates share a subject (a renewed
    CA beside the old one), every path through them is tried, as
    ocaml-x509 does; the first path's reason is reported when none holds.
    """
    if not certs:
        raise ChainError("empty certificate chain")
    for c in certs:
        pub = c.public_key()
        if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 1024:
            raise ChainError(f"{_describe(c)}: RSA key of {pub.key_size} bits is too small (minimum 1024)")
    sent = {_der(c) for c in certs}

    def checked(verified: list[x509.Certificate]) -> list[x509.Certificate]:
        if len(verified) > 1 and _der(verified[-1]) not in sent:
            verified = verified[:-1]
        for i, c in enumerate(verified):
            check_path_cert(c, "leaf" if i == 0 else "issuer", tls_client=tls_client)
        return verified
    try:
        return checked(_openssl_path(certs, anchors))
    except ChainError as e:
        first = e
    candidates = candidate_paths(certs, anchors)
    if len(candidates) < 2:
        raise first
    for intermediates, anchor in candidates:
        try:
            return checked(_openssl_path([certs[0], *intermediates], [anchor]))
        except ChainError:
            continue
    raise first


# ----------------------------------------------------- albatross processing

@dataclass(frozen=True)
class Request:
    """What a validated client chain asks for."""

    name: Name
    policies: list[tuple[tuple[str, ...], Policy]]  # deepest sub-CA first
    version: int
    command: m.Cmd


_NEEDS_NAME = {
    m.PolicyAdd: "policy add", m.PolicyRemove: "policy remove",
    m.BlockAdd: "block add", m.OldBlockAdd: "old block add", m.BlockRemove: "block remove",
    m.BlockSet: "block set", m.OldBlockSet: "old block set",
    m.BlockDump: "block dump", m.OldBlockDump: "block dump",
}


def _command(cert: x509.Certificate) -> tuple[int, m.Cmd] | None:
    try:
        return pki.certificate_command(cert)
    except pki.PkiError as e:
        raise ChainError(e.message) from None


def cert_name(cert: x509.Certificate) -> str | None:
    """The CN that names ``cert`` for albatross (upstream ``cert_name``):
    None for certificates without the extension, or without a CN when the
    command does not need one."""
    try:
        raw = pki.extension_bytes(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as e:
        raise ChainError(f"malformed extensions: {e}") from None
    if raw is None:
        return None
    cn = pki.subject_cn(cert)
    if cn is not None:
        return cn
    found = _command(cert)
    what = _NEEDS_NAME.get(type(found[1])) if found else None
    if what is not None:
        raise ChainError(f"{what} may not have an empty name")
    return None


def _label(cn: str) -> str:
    try:
        return label_of_string(cn)
    except NameError_ as e:
        raise ChainError(e.message) from None


def allowed_command(cmd: m.Cmd) -> bool:
    """The commands a leaf certificate may carry (wire.md §6.2)."""
    return (isinstance(cmd, (m.ConsoleSubscribe, m.ConsoleListInactive, m.StatsSubscribe, m.PolicyInfoCmd))
            or cmd.GROUP in ("Unikernel_cmd", "Block_cmd"))


def process_chain(chain: list[x509.Certificate]) -> Request:
    """Name, policies, version and command of a validated chain (leaf first)."""
    if len(chain) >= MAX_CHAIN:
        raise ChainError("certificate chain too long")
    if not chain:
        raise ChainError("empty chain")
    leaf, rest = chain[0], list(reversed(chain[1:]))
    path: tuple[str, ...] = ()
    policies: list[tuple[tuple[str, ...], Policy]] = []
    for cert in rest:
        found = _command(cert)
        if found is None:
            continue
        cmd = found[1]
        if not isinstance(cmd, m.PolicyAdd):
            from .. import pretty
            raise ChainError(f"unexpected wire {pretty.command(cmd)}")
        cn = cert_name(cert)
        if cn is not None:
            path = path + (_label(cn),)
        policies.insert(0, (path, cmd.policy))
    cn = cert_name(leaf)
    if cn is None or cn in (".", ":"):
        name = Name.of_path(path)
    else:
        name = Name(path, _label(cn))
    found = _command(leaf)
    if found is None:
        raise ChainError("leaf certificate does not contain an albatross extension")
    version, cmd = found
    if not allowed_command(cmd):
        raise ChainError("unexpected command")
    return Request(name, policies, version, cmd)


# ------------------------------------------------------------ TLS contexts

_SSL_CTRL_SET_MAX_CERT_LIST = 51
_DEFAULT_MAX_CERT_LIST = 100 * 1024


def _raise_max_cert_list(ctx: SSL.Context, limit: int) -> bool:
    """Let the peer's Certificate message be up to ``limit`` bytes.

    OpenSSL rejects certificate messages above 100 KiB by default, but
    albatross embeds unikernel images in client certificates (up to
    16 MiB).  ``SSL_CTX_set_max_cert_list`` is not exposed by pyOpenSSL or
    cryptography's bindings, so the field is located in the SSL_CTX: it is
    the size_t just after min/max protocol version (both set to TLS 1.3
    before this is called, so two adjacent 0x0304 words), holding the
    default of 102400.  Tests check that a large certificate passes.  Returns False
    (and changes nothing) if that layout is not found.
    """
    from OpenSSL._util import ffi, lib  # noqa: PLC0415 - private, used only here
    ctrl = getattr(lib, "SSL_CTX_ctrl", None)
    if ctrl is not None:  # pragma: no cover - bindings that expose it
        ctrl(ctx._context, _SSL_CTRL_SET_MAX_CERT_LIST, limit, ffi.NULL)
        return True
    words = ffi.cast("uint32_t *", ctx._context)
    sizes = ffi.cast("size_t *", ctx._context)
    tls13 = 0x0304
    hits = [i for i in range(2, 256)
            if sizes[i] == _DEFAULT_MAX_CERT_LIST
            and any(words[j] == tls13 and words[j + 1] == tls13 for j in range(2 * i - 4, 2 * i - 1))]
    if len(hits) != 1:
        return False
    sizes[hits[0]] = limit
    return True


def _use_chain(ctx: SSL.Context, chain: list[x509.Certificate], key: pki.PrivateKey) -> None:
    try:
        ctx.use_certificate(chain[0])
    except TypeError:  # older pyOpenSSL (Debian 12: 23.0) takes only its own X509 and PKey
        ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
        for c in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(c))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    else:
        for c in chain[1:]:
            ctx.add_extra_chain_cert(c)
        ctx.use_privatekey(key)
    ctx.check_privatekey()


def _verify_error(errno: int) -> str:
    from OpenSSL._util import ffi, lib  # noqa: PLC0415 - private, used only here
    fn = getattr(lib, "X509_verify_cert_error_string", None)
    return ffi.string(fn(errno)).decode() if fn is not None else f"error {errno}"


_X509_V_ERR_CERT_SIGNATURE_FAILURE = 7


class VerifyRecord(list):
    """What the verify callback records on its connection: the first
    reason of a refusal, and ``recheck`` when OpenSSL's path may have gone
    through the wrong one of several same-named issuers (the whole chain
    is then validated by :func:`validate_chain` after the handshake)."""

    recheck = False


def _verify_callback(anchors: list[x509.Certificate], tls_client: bool):
    anchor_ders = {_der(a) for a in anchors}

    # pyOpenSSL keeps an exception raised by a verify callback on the
    # *context* and re-raises it from whichever connection of that context
    # next reports an SSL condition (even WantRead), so under concurrent
    # handshakes one client's rejection would surface in another's.  The
    # callback therefore never raises: it records the reason on its own
    # connection (see TlsStream) and returns False.
    def callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        problems = None
        try:
            problems = conn.get_app_data()
            if getattr(problems, "recheck", False):
                return True  # the whole chain is validated after the handshake
            if not ok and errno == _X509_V_ERR_CERT_SIGNATURE_FAILURE and isinstance(problems, VerifyRecord):
                # OpenSSL picks the first issuer by name; another of that
                # name may be the signer: decide on the whole chain later
                problems.recheck = True
                return True
            if not ok:
                raise ChainError(f"certificate verification failed at depth {depth}: {_verify_error(errno)}")
            c = cert.to_cryptography()
            if depth == 0:
                check_path_cert(c, "leaf", tls_client=tls_client)
            elif _der(c) not in anchor_ders:
                check_path_cert(c, "issuer")
            return True
        except Exception as e:  # noqa: BLE001 - recorded per connection, never raised here
            if isinstance(problems, list) and not problems:
                # without its traceback: that would hold this frame, hence the
                # connection, in a cycle only the garbage collector breaks (the
                # megabytes of a large handshake "never returned")
                problems.append(ChainError(e.message) if isinstance(e, ChainError)
                                else ChainError(f"certificate check failed: {e}"))
            return False
    return callback


def server_context(ca: x509.Certificate, chain: list[x509.Certificate], key: pki.PrivateKey,
                   max_cert_list: int = pki.MAX_CERT_SIZE + 65536) -> SSL.Context:
    """TLS 1.3 only, client certificate required and validated against ``ca``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    if not _raise_max_cert_list(ctx, max_cert_list):
        log.warning("could not raise OpenSSL's certificate size limit: client certificates "
                    "above 100 KiB (embedded images) will be rejected")
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    _use_chain(ctx, chain, key)
    store = ctx.get_cert_store()
    store.add_cert(crypto.X509.from_cryptography(ca))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback([ca], tls_client=True))
    ctx.albatross_anchors = ([ca], True)
    return ctx


def client_context(chain: list[x509.Certificate], key: pki.PrivateKey,
                   server_cas: list[x509.Certificate]) -> SSL.Context:
    """TLS 1.2-1.3, presenting ``chain``; the server must chain to ``server_cas``
    (no host name check, as upstream)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    _use_chain(ctx, chain, key)
    store = ctx.get_cert_store()
    for a in server_cas:
        store.add_cert(crypto.X509.from_cryptography(a))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    ctx.set_verify(SSL.VERIFY_PEER, _verify_callback(server_cas, tls_client=False))
    ctx.albatross_anchors = (list(server_cas), False)
    return ctx


# ------------------------------------------------------------- TLS streams

class TlsTimeout(AlbatrossError):
    """A deadline passed while waiting for the peer."""


class TlsClosed(AlbatrossError):
    """The peer closed the connection (cleanly or not)."""


class TlsStream:
    """A pyOpenSSL connection over memory BIOs on a non-blocking socket,
    used blockingly with optional deadlines (poll, no select() fd limit),
    or step by step from an event loop (:meth:`handshake_step`,
    :meth:`feed`, :meth:`send_pending`); framing helpers for albatross
    chunks.  Every byte read from the peer goes through :meth:`feed`, so
    ``received`` is what the peer made us buffer."""

    def __init__(self, ctx: SSL.Context, sock: socket.socket, server: bool):
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # request/response: no Nagle delay on small final records
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.sock = sock
        self.ctx = ctx
        self.conn = SSL.Connection(ctx, None)
        self.verify_problems = VerifyRecord()
        self.conn.set_app_data(self.verify_problems)
        self.validated: list[x509.Certificate] | None = None
        self.received = 0
        self.eof = False
        self.max_received: int | None = None  # cap on ``received`` (before authentication)
        self._out = bytearray()
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()

    # -- non-blocking primitives ----------------------------------------------
    def _pump_out(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(1 << 16)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._out += data

    def send_pending(self) -> bool:
        """Send what TLS produced without blocking; True when nothing is left."""
        self._pump_out()
        while self._out:
            try:
                n = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return False
            del self._out[:n]
        return True

    def feed(self, limit: int = 1 << 16) -> int:
        """Read at most ``limit`` bytes from the socket into TLS without
        blocking: their number, 0 at EOF, -1 when none are available."""
        if self.eof:
            return 0
        try:
            data = self.sock.recv(max(1, min(limit, 1 << 16)))
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self.conn.bio_shutdown()
            return 0
        self.conn.bio_write(data)
        self.received += len(data)
        return len(data)

    def handshake_step(self) -> bool:
        """Advance the handshake with what was fed: True once complete.
        Raises (the verify callback's reason first) on failure; call
        :meth:`send_pending` afterwards in either case (alerts)."""
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            if self.eof:
                raise TlsClosed("connection closed during handshake") from None
            return False
        except SSL.Error:
            self._pump_out()
            if self.verify_problems:  # the precise reason of our own verify callback
                raise ChainError(self.verify_problems[0].message) from None
            raise
        self._recheck()
        return True

    def _recheck(self) -> None:
        """The whole chain, when the verify callback deferred to it."""
        if not self.verify_problems.recheck:
            return
        anchors, tls_client = getattr(self.ctx, "albatross_anchors", ([], False))
        peer = self.conn.get_peer_certificate()
        if peer is None:
            raise ChainError("no peer certificate")
        leaf = peer.to_cryptography()
        rest = [c.to_cryptography() for c in (self.conn.get_peer_cert_chain() or [])]
        sent = [leaf] + [c for c in rest if _der(c) != _der(leaf)]
        self.validated = validate_chain(sent, anchors, tls_client=tls_client)

    # -- blocking use ------------------------------------------------------------
    def _wait(self, want_write: bool, deadline: float | None) -> None:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TlsTimeout("timeout")
        p = select.poll()
        p.register(self.sock, select.POLLOUT if want_write else select.POLLIN)
        if not p.poll(None if timeout is None else max(1, int(timeout * 1000 + 0.999))):
            raise TlsTimeout("timeout")

    def _flush(self, deadline: float | None) -> None:
        while not self.send_pending():
            self._wait(True, deadline)

    def _feed_limit(self) -> int:
        if self.max_received is None:
            return 1 << 16
        left = self.max_received - self.received
        if left <= 0:
            raise ChainError(f"more than {self.max_received} bytes before authentication")
        return left

    def _retry(self, fn, deadline: float | None):
        while True:
            try:
                result = fn()
            except SSL.WantReadError:
                self._flush(deadline)
                while self.feed(self._feed_limit()) < 0:
                    self._wait(False, deadline)
                # what else is there already (up to 1 MiB): fewer, larger steps for
                # OpenSSL, whose cost per step grows with a large handshake message
                for _ in range(15):
                    if self.feed(self._feed_limit()) <= 0:
                        break
                continue
            except SSL.Error:
                try:  # let the peer see our alert
                    self._flush(time.monotonic() + 1 if deadline is None else min(deadline, time.monotonic() + 1))
                except (TlsTimeout, OSError):
                    pass
                raise
            self._flush(deadline)
            return result

    def handshake(self, timeout: float | None = None, deadline: float | None = None,
                  max_received: int | None = None) -> None:
        """Blocking handshake within ``timeout`` (or until ``deadline``),
        the peer sending at most ``max_received`` bytes in all."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
        self.max_received = max_received
        try:
            self._retry(self.conn.do_handshake, deadline)
        except SSL.Error:
            if self.verify_problems:  # the precise reason of our own verify callback
                raise ChainError(self.verify_problems[0].message) from None
            raise
        finally:
            self.max_received = None
        self._recheck()

    def recv(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """Some bytes, b'' at EOF (clean or not)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._retry(lambda: self.conn.recv(n), deadline)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            if self.eof or (e.args and e.args[0] in (-1, 0)):  # unexpected EOF
                return b""
            raise
        except SSL.Error as e:
            if self.eof and "unexpected eof" in str(e).lower():  # not an alert that came before the EOF
                return b""
            raise

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            data = self.recv(min(n - len(buf), 1 << 20), timeout)
            if not data:
                return None
            buf += data
        return bytes(buf)

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        """``timeout``: the longest the peer may take to accept each piece."""
        view = memoryview(data)
        while view:
            deadline = None if timeout is None else time.monotonic() + timeout
            piece = view[:1 << 16]
            sent = self._retry(lambda: self.conn.send(piece), deadline)
            view = view[sent:]

    def read_chunk(self, max_size: int = DEFAULT_MAX_SIZE, timeout: float | None = None):
        """One chunk: bytes, END for a length <= 0, None at EOF.  FrameError if oversized."""
        head = self.recv_exact(4, timeout)
        if head is None:
            return None
        (length,) = struct.unpack(">i", head)
        if length <= 0:
            return END
        if length > max_size:
            from ..errors import FrameError
            raise FrameError(f"chunk of {length} bytes exceeds the maximum of {max_size} bytes")
        return self.recv_exact(length, timeout)

    def write_chunk(self, body: bytes, timeout: float | None = None) -> None:
        self.sendall(struct.pack(">i", len(body)) + body, timeout)

    def peer_chain(self) -> list[x509.Certificate]:
        """The validated peer chain, leaf first, without the trust anchor
        unless the peer sent it."""
        if self.validated is not None:
            return list(self.validated)
        verified = self.conn.get_verified_chain() or []
        chain = [c.to_cryptography() for c in verified]
        sent = {_der(c.to_cryptography()) for c in (self.conn.get_peer_cert_chain() or [])}
        peer = self.conn.get_peer_certificate()
        if peer is not None:
            sent.add(_der(peer.to_cryptography()))
        if len(chain) > 1 and _der(chain[-1]) not in sent:
            chain = chain[:-1]
        return chain

    def close(self) -> None:
        try:
            self.conn.shutdown()
        except (SSL.Error, OSError):
            pass
        try:
            self.send_pending()  # close_notify, best effort, never blocks
        except (SSL.Error, OSError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
