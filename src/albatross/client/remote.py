"""The remote side of albatross-client: commands over TLS (``--destination``)
and certificate signing requests (``--csr``), certificates.md §5.

Remote mode signs an ephemeral leaf carrying the command with ``--ca-key``,
validates the chain [leaf; --ca certs] against ``--server-ca`` locally,
connects with TLS and reads the replies with the same :class:`ReplyHandler`
as local mode, so output and exit codes are those of local mode.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterable, Iterator

from cryptography import x509
from OpenSSL import SSL

from ..errors import AlbatrossError
from ..policy.names import ROOT, Name
from ..tls import pki
from ..tls.chain import ChainError, TlsStream, client_context, validate_chain
from ..wire import END, decode_wire
from ..wire import messages as m
from .common import (
    CHAIN_FAILURE, CLI_FAILED, COMMUNICATION_FAILED, CONNECT_FAILED, LOCAL_AUTHENTICATION_FAILED,
    REMOTE_AUTHENTICATION_FAILED, SUCCESS, CliError, ReplyHandler, Target, app, debug, error, info,
)

DEFAULT_PORT = 1025
UPLOAD_CHUNK = 1 << 16


def parse_destination(dest: str) -> tuple[str, int]:
    """HOST[:PORT]: the last ':' separates the port (IPv6 literals need one,
    or brackets)."""
    if dest.startswith("[") and "]" in dest:
        host, _, rest = dest[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif ":" in dest:
        host, _, port = dest.rpartition(":")
    else:
        host, port = dest, ""
    if not host:
        raise CliError(f"invalid destination {dest!r}")
    if port == "":
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"invalid port in destination {dest!r}")
    return host, int(port)


def _load(fn, path: str):
    try:
        return fn(path)
    except pki.PkiError as e:
        raise CliError(e.message) from None


# ------------------------------------------------------------- TLS errors

_CERT_ALERTS = ("bad certificate", "certificate expired", "unsupported certificate",
                "certificate unknown", "certificate revoked", "unknown ca", "certificate required",
                "handshake failure", "access denied")


def _ssl_reason(e: BaseException) -> str:
    if isinstance(e, SSL.Error) and e.args and isinstance(e.args[0], list):
        return "; ".join(r[2] if len(r) > 2 else str(r) for r in e.args[0]) or str(e)
    return str(e) or type(e).__name__


def classify_handshake_error(e: BaseException) -> int:
    """Exit code for a failed TLS handshake (upstream ``classify_tls_error``)."""
    reason = _ssl_reason(e)
    if isinstance(e, ChainError) or "certificate verify failed" in reason:
        error(f"remote authentication failure {reason}")
        return REMOTE_AUTHENTICATION_FAILED
    if "alert" in reason and any(a in reason for a in _CERT_ALERTS):
        error(f"local authentication failure {reason}")
        return LOCAL_AUTHENTICATION_FAILED
    error(f"failed to establish TLS connection: {reason}")
    return COMMUNICATION_FAILED


# --------------------------------------------------------------- transport

def execute(destination: str, chain: list[x509.Certificate], key: pki.PrivateKey, server_ca: str,
            handler: ReplyHandler, upload: Iterable[bytes] | None = None) -> int:
    """Validate ``chain`` locally, connect, present it, upload, read replies."""
    anchors = _load(pki.load_certs, server_ca)
    try:
        validate_chain(chain, anchors)
    except ChainError as e:
        error(f"TLS validation error of provided certificate chain: {e.message}")
        return CHAIN_FAILURE
    if destination == "-":
        app("intermediate:\n" + "\n\n".join(pki.pem(c) for c in chain[1:]) + "\nleaf:\n" + pki.pem(chain[0]))
        return COMMUNICATION_FAILED
    host, port = parse_destination(destination)
    try:
        sock = socket.create_connection((host, port))
    except OSError as e:
        error(f"connect failed with {e.strerror or e}")
        return CONNECT_FAILED
    debug(f"connected to remote host {host}:{port}")
    tls = TlsStream(client_context(chain, key, anchors), sock, server=False)
    try:
        try:
            tls.handshake()
        except (SSL.Error, ChainError, OSError) as e:
            return classify_handshake_error(e)
        debug("finished tls handshake")
        return _exchange(tls, handler, upload)
    finally:
        tls.close()


def _exchange(tls: TlsStream, handler: ReplyHandler, upload: Iterable[bytes] | None) -> int:
    try:
        if upload is not None:
            for chunk in upload:
                if chunk:
                    tls.write_chunk(chunk)
            tls.write_chunk(b"")
        while True:
            body = tls.read_chunk()
            if body is None or body is END:
                return handler.eof()
            code = handler.handle(decode_wire(body))
            if code is not None:
                return code
    except SSL.Error as e:
        reason = _ssl_reason(e)
        if "alert" in reason and any(a in reason for a in _CERT_ALERTS):
            error(f"local authentication failure {reason}")
            return LOCAL_AUTHENTICATION_FAILED
        error(f"communication failure: {reason}")
        return COMMUNICATION_FAILED
    except (AlbatrossError, OSError) as e:
        error(f"communication failure: {e}")
        return COMMUNICATION_FAILED


def _pieces(data: bytes, size: int = UPLOAD_CHUNK) -> Iterator[bytes]:
    for off in range(0, len(data), size):
        yield data[off:off + size]


def build_leaf(target: Target, name: Name, cmd: m.Cmd):
    """The ephemeral leaf for ``cmd`` signed by --ca-key: (chain, key, streamed image).

    A create whose certificate would exceed 16 MiB gets an empty image in the
    certificate; the image is then streamed after the handshake (wire.md §6.3).
    Raises CliError for unusable inputs, PkiError/PolicyError for failed checks.
    """
    try:
        cn = pki.leaf_cn(name, cmd)
    except pki.PkiError as e:
        raise CliError(e.message) from None
    certs = _load(pki.load_certs, target.ca)
    ca_key = _load(pki.load_key, target.ca_key)
    try:
        leaf, key = pki.ephemeral_leaf(certs[0], ca_key, cn, cmd, target.key_type)
        return [leaf] + certs, key, None
    except pki.PkiError as e:
        if e.message != "certificate too big for TLS" or not isinstance(cmd, m.UnikernelCreate):
            raise
    info("image too big for the certificate, streaming it after the handshake")
    light = dataclasses.replace(cmd, config=dataclasses.replace(cmd.config, image=b""))
    leaf, key = pki.ephemeral_leaf(certs[0], ca_key, cn, light, target.key_type)
    return [leaf] + certs, key, cmd.config.image


def run_remote(target: Target, name: Name, cmd: m.Cmd, upload: Iterable[bytes] | None,
               handler: ReplyHandler) -> int:
    """Run ``cmd`` at ``target.destination``; the exit code."""
    try:
        chain, key, image = build_leaf(target, name, cmd)
    except (pki.PkiError, AlbatrossError) as e:
        if isinstance(e, CliError):
            raise
        error(f"couldn't generate certificate chain: {e.message}")
        return CLI_FAILED
    if image is not None:
        upload = _pieces(image)
    return execute(target.destination, chain, key, target.server_ca, handler, upload)


def run_certificate(destination: str, cert: str, key_file: str, server_ca: str) -> int:
    """``certificate CERT KEY``: run the command of an existing leaf."""
    chain = _load(pki.load_certs, cert)
    key = _load(pki.load_key, key_file)
    if not pki.key_matches(key, chain[0]):
        error("Public key of certificate doesn't match private key")
        return CLI_FAILED
    try:
        found = pki.certificate_command(chain[0])
    except pki.PkiError:
        found = None
    cmd = found[1] if found is not None else m.StatsSubscribe()
    handler = ReplyHandler(cmd, ROOT)
    if found is None:
        handler.mode = "read"
    return execute(destination, chain, key, server_ca, handler)


def write_csr(target: Target, name: Name, cmd: m.Cmd) -> int:
    """``--csr``: ``<CN>.key`` (created 0400 unless present) and ``<CN>.req``."""
    try:
        cn = pki.leaf_cn(name, cmd)
        key, created = pki.key_for(cn, target.key_type)
        if created:
            info(f"creating new {target.key_type} key {cn}.key")
        csr = pki.make_csr(cn, key, cmd)
        from cryptography.hazmat.primitives import serialization
        pki.write_file(cn + ".req", csr.public_bytes(serialization.Encoding.PEM))
    except (pki.PkiError, ValueError) as e:
        error(f"error while creating CSR: {getattr(e, 'message', e)}")
        return CLI_FAILED
    return SUCCESS
