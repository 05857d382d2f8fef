"""Keys, certificate profiles, CSRs and signing as albatross-client does it
(certificates.md §4, §5).

Everything here is pure computation on ``cryptography`` objects except the
few file helpers at the bottom (key files with mode 0400, the db file,
PEM chains).  Problems are reported as :class:`PkiError` with a message.
"""

from __future__ import annotations

import datetime as _dt
import enum
import os
import re
import secrets
import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from ..core import Policy
from ..errors import AlbatrossError
from ..policy import policies
from ..wire import decode_cert_extension, encode_cert_extension
from ..wire import messages as m

#: robur's private enterprise number 49836, arc 42
ALBATROSS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.49836.42")

#: upstream refuses certificates whose DER is larger (TLS handshake messages are 24-bit)
MAX_CERT_SIZE = 1 << 24

KEY_TYPES = ("rsa2048", "rsa4096", "ed25519", "p256", "p384", "p521")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

DAY = 86400



class PkiError(AlbatrossError):
    """A key, CSR or certificate problem (bad file, failed check...)."""


# --------------------------------------------------------------------- keys

def generate_key(key_type: str = "ed25519") -> PrivateKey:
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type in ("rsa2048", "rsa4096"):
        return rsa.generate_private_key(65537, int(key_type[3:]))
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    if key_type in curves:
        return ec.generate_private_key(curves[key_type]())
    raise PkiError(f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The hash used when ``key`` signs (§4.1): None for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[key.curve.key_size]
    raise PkiError(f"unsupported private key type {type(key).__name__}")


def public_der(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    return public_der(key.public_key()) == public_der(cert.public_key())


def key_id(pub) -> bytes:
    """RFC 5280 method 1: SHA-1 over the subjectPublicKey bits."""
    return x509.SubjectKeyIdentifier.from_public_key(pub).digest


# ------------------------------------------------------------------ serials

def random_serial(raw: bytes | None = None) -> bytes:
    """The INTEGER content bytes of a fresh serial (ocaml-x509's rule, §4.2).

    10 random bytes; 0x00 is prepended if the first is > 0x7F (keeps it
    positive), 0x7F if the first is 0x00 and the second <= 0x7F (keeps the
    encoding minimal).  ``raw`` lets tests pin the random bytes.
    """
    b = raw if raw is not None else secrets.token_bytes(10)
    if b[0] > 0x7F:
        return b"\x00" + b
    if b[0] == 0x00 and b[1] <= 0x7F:
        return b"\x7f" + b
    return b


def serial_int(content: bytes) -> int:
    return int.from_bytes(content, "big", signed=True)


def serial_content(cert: x509.Certificate) -> bytes:
    """The INTEGER content bytes of a certificate's serial (minimal DER)."""
    n = cert.serial_number
    return n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)


# ------------------------------------------------------- albatross extension

def albatross_extension(cmd: m.Cmd) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(ALBATROSS_OID, encode_cert_extension(cmd))


def extension_bytes(exts: x509.Extensions) -> bytes | None:
    """The raw value of the albatross extension, None if absent."""
    for ext in exts:
        if ext.oid == ALBATROSS_OID:
            return ext.value.value
    return None


def certificate_extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise PkiError(f"malformed certificate extensions: {e}") from None


def certificate_command(cert: x509.Certificate) -> tuple[int, m.Cmd] | None:
    """(version, command) of the albatross extension; None if absent."""
    raw = extension_bytes(certificate_extensions(cert))
    if raw is None:
        return None
    try:
        return decode_cert_extension(raw)
    except AlbatrossError as e:
        raise PkiError(f"couldn't parse albatross extension: {e.message}") from None


def certificate_policy(cert: x509.Certificate) -> Policy | None:
    """The policy of a sub-CA certificate (its Policy_add extension), else None."""
    try:
        found = certificate_command(cert)
    except PkiError:
        raise PkiError("couldn't parse albatross extension in cert") from None
    if found is not None and isinstance(found[1], m.PolicyAdd):
        return found[1].policy
    return None


def _quiet(fn):
    """Run ``fn`` without cryptography's warning about CNs outside 1..64
    characters: albatross deliberately puts the empty root path (remote policy
    commands) and long paths into CNs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length must be", category=UserWarning)
        return fn()


def subject_cn(obj: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    """The last CN of a certificate's or CSR's subject."""
    return _quiet(lambda: common_name(obj.subject))


def common_name(name: x509.Name) -> str | None:
    """The last CN attribute of a DN (as ocaml-x509's ``common_name``)."""
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        return None
    v = cns[-1].value
    return v if isinstance(v, str) else v.decode("utf-8", "replace")


def cn_name(cn: str) -> x509.Name:
    """A DN of one RDN with one CN (UTF8String); any length, even empty."""
    return _quiet(lambda: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)]))


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


# ----------------------------------------------------------------- profiles

class Profile(enum.Enum):
    CA = "ca"            # root CA and sub-CAs
    LEAF = "leaf"        # client certificates carrying a command
    SERVER = "server"    # TLS server / host certificates


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=True, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False)
_EE_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=True,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False)


def profile_extensions(profile: Profile) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) of a profile, without key ids (§4 table)."""
    if profile is Profile.CA:
        return [(x509.BasicConstraints(ca=True, path_length=None), True), (_CA_USAGE, True)]
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if profile is Profile.LEAF else ExtendedKeyUsageOID.SERVER_AUTH
    return [(_EE_USAGE, True), (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([eku]), True)]


def timestamps(validity: int, now: _dt.datetime | None = None) -> tuple[_dt.datetime, _dt.datetime]:
    """notBefore = now - 10 s (clock skew allowance), notAfter = now + validity seconds."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now - _dt.timedelta(seconds=10), now + _dt.timedelta(seconds=validity)


def issue(subject: x509.Name, public_key, issuer: x509.Name, signing_key: PrivateKey,
          extensions: list[tuple[x509.ExtensionType, bool]], validity: int,
          key_ids: bool = True, serial: bytes | None = None,
          now: _dt.datetime | None = None) -> x509.Certificate:
    """Sign one certificate: v3, random serial, validity, extensions (+ SKI/AKI)."""
    not_before, not_after = timestamps(validity, now)
    b = (x509.CertificateBuilder()
         .subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(serial_int(serial or random_serial()))
         .not_valid_before(not_before).not_valid_after(not_after))
    exts = list(extensions)
    if key_ids:
        exts.append((x509.SubjectKeyIdentifier(key_id(public_key)), False))
        exts.append((x509.AuthorityKeyIdentifier(key_id(signing_key.public_key()), None, None), False))
    for ext, critical in exts:
        b = b.add_extension(ext, critical=critical)
    try:
        return b.sign(signing_key, signature_hash(signing_key))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PkiError(f"signing failed: {e}") from None


def make_csr(cn: str, key: PrivateKey, cmd: m.Cmd | None = None,
             extra: list[tuple[x509.ExtensionType, bool]] = ()) -> x509.CertificateSigningRequest:
    """CSR with subject CN=cn; extensionRequest = ``extra`` + the albatross extension."""
    b = x509.CertificateSigningRequestBuilder().subject_name(cn_name(cn))
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    if cmd is not None:
        b = b.add_extension(albatross_extension(cmd), critical=False)
    return b.sign(key, signature_hash(key))


def csr_command(csr: x509.CertificateSigningRequest) -> tuple[int, m.Cmd] | None:
    try:
        exts = csr.extensions
    except (ValueError, x509.DuplicateExtension) as e:
        raise PkiError(f"malformed extension request in CSR: {e}") from None
    raw = extension_bytes(exts)
    if raw is None:
        return None
    try:
        return decode_cert_extension(raw)
    except AlbatrossError as e:
        raise PkiError(f"couldn't parse albatross extension: {e.message}") from None


_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def allowed_signature(obj, public_key=None) -> bool:
    """Signed with SHA-2 (256/384/512) or Ed25519, as upstream's ``sha2`` default."""
    try:
        h = obj.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return False
    if h is None:
        pub = public_key if public_key is not None else obj.public_key()
        return isinstance(pub, ed25519.Ed25519PublicKey) or pub is None
    return isinstance(h, _ALLOWED_HASHES)


# ------------------------------------------------------------------ signing

@dataclass(frozen=True)
class Signed:
    """Outcome of signing a CSR: the certificate, its file name and chain."""

    cert: x509.Certificate
    certname: str
    chain: list[x509.Certificate]
    command: m.Cmd | None
    warnings: list[str]


def sign_csr(ca_cert: x509.Certificate, ca_key: PrivateKey, csr: x509.CertificateSigningRequest,
             days: int | None = None) -> Signed:
    """``albatross-client sign`` without the files (§5.2)."""
    if not csr.is_signature_valid or not allowed_signature(csr):
        raise PkiError("CSR signature verification failed")
    certname = subject_cn(csr)
    if certname is None:
        raise PkiError("couldn't find name (no common name in CSR subject)")
    warnings: list[str] = []
    found = csr_command(csr)
    if found is None:
        warnings.append("signing certificate without albatross extension (e.g. host certificate)")
        extensions, default_days, cmd = profile_extensions(Profile.SERVER), 365, None
    else:
        _version, cmd = found
        check_against_issuer(ca_cert, cmd)
        if isinstance(cmd, m.PolicyAdd):
            extensions, default_days = profile_extensions(Profile.CA), 365
        else:
            extensions, default_days = profile_extensions(Profile.LEAF), 1
        extensions = extensions + [(albatross_extension(cmd), False)]
    validity = (days if days is not None else default_days) * DAY
    cert = issue(csr.subject, csr.public_key(), ca_cert.subject, ca_key, extensions, validity)
    chain = [cert] if is_self_signed(ca_cert) else [cert, ca_cert]
    return Signed(cert, certname, chain, cmd, warnings)


def check_against_issuer(ca_cert: x509.Certificate, cmd: m.Cmd) -> None:
    """Static checks of a command against the issuing CA's policy (§3.4)."""
    if isinstance(cmd, m.PolicyAdd):
        policies.usable(cmd.policy)
        super_ = certificate_policy(ca_cert)
        if super_ is not None:
            policies.is_smaller(super_, cmd.policy)
    elif isinstance(cmd, m.UnikernelCreate):
        p = certificate_policy(ca_cert)
        if p is not None:
            policies.fine_with_policy(p, cmd.config)


def self_signed_ca(name: str, key: PrivateKey, days: int) -> x509.Certificate:
    """The root CA of ``generate``: CA profile, no key ids, not in the db."""
    subject = cn_name(name)
    return issue(subject, key.public_key(), subject, key, profile_extensions(Profile.CA),
                 days * DAY, key_ids=False)


def server_certificate(name: str, key: PrivateKey, ca_cert: x509.Certificate, ca_key: PrivateKey,
                       days: int) -> x509.Certificate:
    return issue(cn_name(name), key.public_key(), ca_cert.subject, ca_key,
                 profile_extensions(Profile.SERVER), days * DAY)


def ephemeral_leaf(ca_cert: x509.Certificate, ca_key: PrivateKey, cn: str, cmd: m.Cmd,
                   key_type: str = "ed25519", validity: int = 300,
                   max_size: int = MAX_CERT_SIZE) -> tuple[x509.Certificate, PrivateKey]:
    """The short-lived leaf of remote mode (§5.3): checks, fresh key, 300 s."""
    if not key_matches(ca_key, ca_cert):
        raise PkiError("Public key of certificate doesn't match private key")
    check_against_issuer(ca_cert, cmd)
    key = generate_key(key_type)
    extensions = profile_extensions(Profile.LEAF) + [(albatross_extension(cmd), False)]
    cert = issue(cn_name(cn), key.public_key(), ca_cert.subject, ca_key, extensions, validity)
    if len(cert.public_bytes(serialization.Encoding.DER)) > max_size:
        raise PkiError("certificate too big for TLS")
    return cert, key


def leaf_cn(name, cmd: m.Cmd) -> str:
    """The CN of a remote/CSR leaf (§5.3 step 2): path for policy commands,
    else the label ('.' for none); a non-empty path is refused."""
    if isinstance(cmd, (m.PolicyInfoCmd, m.PolicyAdd, m.PolicyRemove)):
        return ":".join(name.path)
    if name.path:
        raise PkiError("non-empty path")
    return name.label if name.label is not None else "."


# ------------------------------------------------------------------- files

def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pem_chain(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise PkiError(f"couldn't read {what} {path}: {e.strerror}") from None


def load_certs(path: str) -> list[x509.Certificate]:
    try:
        certs = _load_pem_certificates(_read(path, "certificate file"))
    except ValueError as e:
        raise PkiError(f"couldn't decode certificates in {path}: {e}") from None
    if not certs:
        raise PkiError(f"no certificate in {path}")
    return certs


def load_key(path: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "key file"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise PkiError(f"couldn't decode private key in {path}: {e}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise PkiError(f"unsupported private key type in {path}")
    return key


def load_csr(path: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(_read(path, "signing request"))
    except ValueError as e:
        raise PkiError(f"couldn't decode signing request in {path}: {e}") from None


def key_for(name: str, key_type: str, directory: str = ".") -> tuple[PrivateKey, bool]:
    """``<name>.key``: reused if it exists, else created (mode 0400). (key, created)"""
    path = os.path.join(directory, name + ".key")
    if os.path.exists(path):
        return load_key(path), False
    key = generate_key(key_type)
    write_file(path, key_pem(key), 0o400, exclusive=True)
    return key, True


def write_file(path: str, data: bytes, mode: int = 0o644, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as e:
        raise PkiError(f"couldn't write {path}: {e.strerror}") from None


def db_line(cert: x509.Certificate, certname: str) -> str:
    return f"{serial_content(cert).hex()} {certname}\n"


def append_db(db: str, cert: x509.Certificate, certname: str) -> None:
    try:
        fd = os.open(db, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "a") as fh:
            fh.write(db_line(cert, certname))
    except OSError as e:
        raise PkiError(f"couldn't append to {db}: {e.strerror}") from None


def check_size(cert: x509.Certificate, max_size: int = MAX_CERT_SIZE) -> None:
    if len(cert.public_bytes(serialization.Encoding.DER)) > max_size:
        raise PkiError("certificate too big for TLS")


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        if hasattr(cert, "verify_directly_issued_by"):
            cert.verify_directly_issued_by(issuer)
        else:
            _verify_directly_issued_by(cert, issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


# --- cryptography < 40 (Debian 12 ships 38): what newer versions provide ---

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)


def _load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """``x509.load_pem_x509_certificates`` (cryptography >= 39), or the PEM
    blocks one by one where it does not exist."""
    if hasattr(x509, "load_pem_x509_certificates"):
        return x509.load_pem_x509_certificates(data)
    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]


def _verify_directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """``Certificate.verify_directly_issued_by`` (cryptography >= 40) for the
    key types albatross uses: issuer name and signature (PKCS#1 v1.5 for RSA;
    RSA-PSS is refused).  Raises ValueError, TypeError or InvalidSignature."""
    if cert.issuer != issuer.subject:
        raise ValueError("issuer name does not match the issuer's subject")
    key = issuer.public_key()
    hash_alg = cert.signature_hash_algorithm
    if isinstance(key, rsa.RSAPublicKey):
        if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS or hash_alg is None:
            raise UnsupportedAlgorithm("unsupported RSA signature algorithm")
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hash_alg)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if hash_alg is None:
            raise UnsupportedAlgorithm("ECDSA signature without hash")
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    else:
        raise TypeError("unsupported issuer key type")
