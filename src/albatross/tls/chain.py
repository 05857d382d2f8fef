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


def validate_chain(certs: list[x509.Certificate], anchors: list[x509.Certificate],
                   tls_client: bool = False) -> list[x509.Certificate]:
    """Validate ``certs`` (leaf first) against ``anchors`` now.

    Returns the validated path, leaf first, without the trust anchor unless
    it was part of ``certs`` (ocaml-x509's result).  Raises ChainError.
    """
    if not certs:
        raise ChainError("empty certificate chain")
    for c in certs:
        pub = c.public_key()
        if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 1024:
            raise ChainError(f"{_describe(c)}: RSA key of {pub.key_size} bits is too small (minimum 1024)")
    ctx = crypto.X509StoreContext(
        anchor_store(anchors), crypto.X509.from_cryptography(certs[0]),
        [crypto.X509.from_cryptography(c) for c in certs[1:]])
    try:
        verified = [c.to_cryptography() for c in ctx.get_verified_chain()]
    except crypto.X509StoreContextError as e:
        raise ChainError(f"certificate chain validation failed: {e}") from None
    sent = {_der(c) for c in certs}
    if len(verified) > 1 and _der(verified[-1]) not in sent:
        verified = verified[:-1]
    for i, c in enumerate(verified):
        check_path_cert(c, "leaf" if i == 0 else "issuer", tls_client=tls_client)
    return verified


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


def _verify_callback(anchors: list[x509.Certificate], tls_client: bool):
    anchor_ders = {_der(a) for a in anchors}

    # pyOpenSSL keeps an exception raised by a verify callback on the
    # *context* and re-raises it from whichever connection of that context
    # next reports an SSL condition (even WantRead), so under concurrent
    # handshakes one client's rejection would surface in another's.  The
    # callback therefore never raises: it records the reason on its own
    # connection (see TlsStream) and returns False.
    def callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        try:
            if not ok:
                raise ChainError(f"certificate verification failed at depth {depth}: {_verify_error(errno)}")
            c = cert.to_cryptography()
            if depth == 0:
                check_path_cert(c, "leaf", tls_client=tls_client)
            elif _der(c) not in anchor_ders:
                check_path_cert(c, "issuer")
            return True
        except Exception as e:  # noqa: BLE001 - recorded per connection, never raised here
            problems = conn.get_app_data()
            if isinstance(problems, list) and not problems:
                problems.append(e if isinstance(e, ChainError) else ChainError(f"certificate check failed: {e}"))
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
    return ctx


# ------------------------------------------------------------- TLS streams

class TlsTimeout(AlbatrossError):
    """A deadline passed while waiting for the peer."""


class TlsClosed(AlbatrossError):
    """The peer closed the connection (cleanly or not)."""


class TlsStream:
    """A pyOpenSSL connection over a non-blocking socket, used blockingly
    with optional deadlines; framing helpers for albatross chunks."""

    def __init__(self, ctx: SSL.Context, sock: socket.socket, server: bool):
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # request/response: no Nagle delay on small final records
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.sock = sock
        self.conn = SSL.Connection(ctx, sock)
        self.verify_problems: list[ChainError] = []
        self.conn.set_app_data(self.verify_problems)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()

    def _wait(self, want_write: bool, deadline: float | None) -> None:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TlsTimeout("timeout")
        r, w = ([], [self.sock]) if want_write else ([self.sock], [])
        if not any(select.select(r, w, [], timeout)[:2]):
            raise TlsTimeout("timeout")

    def _retry(self, fn, deadline: float | None):
        while True:
            try:
                return fn()
            except SSL.WantReadError:
                self._wait(False, deadline)
            except SSL.WantWriteError:
                self._wait(True, deadline)

    def handshake(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._retry(self.conn.do_handshake, deadline)
        except SSL.Error:
            if self.verify_problems:  # the precise reason of our own verify callback
                raise self.verify_problems[0] from None
            raise

    def recv(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """Some bytes, b'' at EOF (clean or not)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._retry(lambda: self.conn.recv(n), deadline)
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as e:
            if e.args and e.args[0] in (-1, 0):  # unexpected EOF
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
        deadline = None if timeout is None else time.monotonic() + timeout
        view = memoryview(data)
        while view:
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

    def write_chunk(self, body: bytes) -> None:
        self.sendall(struct.pack(">i", len(body)) + body)

    def peer_chain(self) -> list[x509.Certificate]:
        """The validated peer chain, leaf first, without the trust anchor
        unless the peer sent it."""
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
            self.sock.close()
        except OSError:
            pass
