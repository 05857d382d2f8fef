"""Certificate profiles, keys, serials, db file, CSRs and sign checks
(certificates.md §2, §4, §5.1-5.4; features CLI-22..CLI-24)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat

import pytest
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, SignatureAlgorithmOID

from albatross.client import main as client_main
from albatross.client.common import Target
from albatross.client.remote import write_csr
from albatross.core import BlockDevice, FailBehaviour, NetDevice, Policy, Ptime, UnikernelArguments, UnikernelConfig
from albatross.errors import PolicyError
from albatross.policy.names import Name
from albatross.tls import pki
from albatross.wire import decode_cert_extension, encode_cert_extension
from albatross.wire import messages as m

OID = "1.3.6.1.4.1.49836.42"
NOW = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731

USER_POLICY = Policy(16, frozenset({0, 1}), 1024, None, frozenset({"service"}))


def client(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        client_main(list(args))
    return e.value.code


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ext(cert, oid):
    return cert.extensions.get_extension_for_oid(oid)


def raw_serial(cert: x509.Certificate) -> bytes:
    parsed = ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    return parsed["tbs_certificate"]["serial_number"].contents


def key_id(pub) -> bytes:
    """SHA-1 over the subjectPublicKey bits, computed independently."""
    spki = ax509.PublicKeyInfo.load(pub.public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return hashlib.sha1(spki["public_key"].contents[1:]).digest()  # drop the unused-bits byte


def load(path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(open(path, "rb").read())


def assert_validity(cert, seconds, tolerance=30):
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert abs((NOW() - nb).total_seconds() - 10) < tolerance
    assert abs((na - nb).total_seconds() - (seconds + 10)) <= 1


def assert_ca_profile(cert):
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    assert ku.critical
    assert (ku.value.key_cert_sign, ku.value.crl_sign, ku.value.digital_signature,
            ku.value.content_commitment, ku.value.key_encipherment) == (True, True, True, True, False)


def assert_end_entity(cert, eku):
    bc = ext(cert, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and not bc.value.ca
    ku = ext(cert, ExtensionOID.KEY_USAGE)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign and not ku.value.content_commitment
    e = ext(cert, ExtensionOID.EXTENDED_KEY_USAGE)
    assert e.critical and list(e.value) == [eku]


def assert_key_ids(cert, issuer_pub):
    ski = ext(cert, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    aki = ext(cert, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    assert not ski.critical and not aki.critical
    assert ski.value.digest == key_id(cert.public_key())
    assert aki.value.key_identifier == key_id(issuer_pub)
    assert aki.value.authority_cert_issuer is None and aki.value.authority_cert_serial_number is None


def albatross_ext(cert):
    e = [x for x in cert.extensions if x.oid.dotted_string == OID]
    assert len(e) == 1 and not e[0].critical
    return decode_cert_extension(e[0].value.value)


# ------------------------------------------------------------------ serials

@pytest.mark.parametrize("raw,expected", [
    (bytes([0x80]) + b"\x01" * 9, b"\x00\x80" + b"\x01" * 9),
    (bytes([0xFF]) * 10, b"\x00" + bytes([0xFF]) * 10),
    (b"\x00\x7f" + b"\x01" * 8, b"\x7f\x00\x7f" + b"\x01" * 8),
    (b"\x00\x00" + b"\x01" * 8, b"\x7f\x00\x00" + b"\x01" * 8),
    (b"\x00\x80" + b"\x01" * 8, b"\x00\x80" + b"\x01" * 8),
    (b"\x12" + b"\x00" * 9, b"\x12" + b"\x00" * 9),
])
def test_serial_rules_end_up_in_the_certificate(raw, expected):
    assert pki.random_serial(raw) == expected
    key = pki.generate_key()
    cert = pki.issue(pki.cn_name("x"), key.public_key(), pki.cn_name("x"), key, [], 60,
                     serial=pki.random_serial(raw))
    assert raw_serial(cert) == expected
    assert pki.serial_content(cert) == expected
    assert pki.db_line(cert, "x") == expected.hex() + " x\n"


def test_random_serials_are_10_or_11_bytes_and_positive():
    for _ in range(300):
        s = pki.random_serial()
        assert len(s) in (10, 11) and s[0] <= 0x7F
        if len(s) == 11:
            assert s[0] in (0x00, 0x7F)


# ----------------------------------------------------------------- generate

def test_generate_writes_ca_server_and_db(cwd):
    assert client("generate", "ca", "db") == 0
    for f in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o400
    (ca,) = load("cacert.pem")
    assert ca.version == x509.Version.v3
    assert ca.subject == ca.issuer == pki.cn_name("ca")
    assert ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0]._type.name == "UTF8String"
    assert_ca_profile(ca)
    oids = {e.oid for e in ca.extensions}
    assert oids == {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}  # no SKI/AKI, no albatross
    assert_validity(ca, 3650 * 86400)
    assert isinstance(ca.public_key(), ed25519.Ed25519PublicKey)
    assert ca.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    (srv,) = load("server.pem")
    assert srv.issuer == ca.subject and srv.subject == pki.cn_name("server")
    assert_end_entity(srv, ExtendedKeyUsageOID.SERVER_AUTH)
    assert_key_ids(srv, ca.public_key())
    assert OID not in {e.oid.dotted_string for e in srv.extensions}
    assert_validity(srv, 365 * 86400)
    srv.verify_directly_issued_by(ca)
    assert open("db").read() == raw_serial(srv).hex() + " server\n"


def test_generate_options_and_key_reuse(cwd):
    assert client("generate", "root", "ca.db", "--days", "10", "--server", "host", "--server-days", "2") == 0
    key_before = open("root.key", "rb").read()
    (ca,) = load("cacert.pem")
    assert_validity(ca, 10 * 86400)
    (srv,) = load("host.pem")
    assert_validity(srv, 2 * 86400)
    assert client("generate", "root", "ca.db") == 0
    assert open("root.key", "rb").read() == key_before  # existing key reused
    (ca2,) = load("cacert.pem")
    assert ca2.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == \
        ca.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(open("ca.db").read().splitlines()) == 2


@pytest.mark.parametrize("key_type,key_cls,sig_oid", [
    ("ed25519", ed25519.Ed25519PublicKey, SignatureAlgorithmOID.ED25519),
    ("rsa2048", rsa.RSAPublicKey, SignatureAlgorithmOID.RSA_WITH_SHA256),
    ("rsa4096", rsa.RSAPublicKey, SignatureAlgorithmOID.RSA_WITH_SHA256),
    ("p256", ec.EllipticCurvePublicKey, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
    ("p384", ec.EllipticCurvePublicKey, SignatureAlgorithmOID.ECDSA_WITH_SHA384),
    ("p521", ec.EllipticCurvePublicKey, SignatureAlgorithmOID.ECDSA_WITH_SHA512),
])
def test_key_types_and_signature_algorithms(cwd, key_type, key_cls, sig_oid):
    assert client("generate", "ca", "db", "--key-type", key_type) == 0
    (ca,) = load("cacert.pem")
    (srv,) = load("server.pem")
    for c in (ca, srv):
        assert isinstance(c.public_key(), key_cls)
        assert c.signature_algorithm_oid == sig_oid
    if key_type.startswith("rsa"):
        assert ca.public_key().key_size == int(key_type[3:])
        assert ca.signature_algorithm_parameters is not None  # PKCS#1 v1.5
    if key_type.startswith("p"):
        assert ca.public_key().curve.key_size == int(key_type[1:])
    assert_key_ids(srv, ca.public_key())


# --------------------------------------------------------------------- CSR

def test_csr_for_policy_has_only_the_extension(cwd):
    cmd = m.PolicyAdd(USER_POLICY)
    assert write_csr(Target(csr=True), Name.of_path(("user",)), cmd) == 0
    assert stat.S_IMODE(os.stat("user.key").st_mode) == 0o400
    csr = x509.load_pem_x509_csr(open("user.req", "rb").read())
    assert csr.is_signature_valid
    assert csr.subject == pki.cn_name("user")
    exts = list(csr.extensions)
    assert len(exts) == 1 and exts[0].oid.dotted_string == OID and not exts[0].critical
    assert exts[0].value.value == encode_cert_extension(cmd)
    assert decode_cert_extension(exts[0].value.value) == (5, cmd)


def test_csr_key_is_reused_and_cn_rules(cwd):
    info = m.UnikernelInfoCmd()
    assert write_csr(Target(csr=True), Name((), "hello"), info) == 0
    key = open("hello.key", "rb").read()
    assert write_csr(Target(csr=True, key_type="p256"), Name((), "hello"), m.UnikernelDestroy()) == 0
    assert open("hello.key", "rb").read() == key
    csr = x509.load_pem_x509_csr(open("hello.req", "rb").read())
    assert csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == pki.load_key("hello.key").public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # a name with a path is refused for non-policy commands
    assert write_csr(Target(csr=True), Name(("a",), "hello"), info) == 124
    assert not os.path.exists("a:hello.req")
    # path-only name: CN "."; policy commands: CN = the path
    assert pki.leaf_cn(Name.of_path(()), info) == "."
    assert pki.leaf_cn(Name.of_path(("a", "b")), m.PolicyInfoCmd()) == "a:b"
    assert pki.leaf_cn(Name.of_path(()), m.PolicyInfoCmd()) == ""


# -------------------------------------------------------------------- sign

def make_root(cwd):
    assert client("generate", "ca", "db") == 0


def csr_file(cn, cmd):
    key, _ = pki.key_for(cn, "ed25519")
    csr = pki.make_csr(cn, key, cmd)
    pki.write_file(cn + ".req", csr.public_bytes(serialization.Encoding.PEM))
    return cn + ".req"


def test_sign_policy_csr_gives_sub_ca(cwd, capsys):
    make_root(cwd)
    cmd = m.PolicyAdd(USER_POLICY)
    assert client("sign", "cacert.pem", "db", "ca.key", csr_file("user", cmd)) == 0
    out = capsys.readouterr().out
    assert "signing certificate with subject /CN=user" in out and "signing policy add" in out
    certs = load("user.pem")
    assert len(certs) == 1  # the root CA is self-signed: not appended
    (sub,) = certs
    (ca,) = load("cacert.pem")
    assert_ca_profile(sub)
    assert_key_ids(sub, ca.public_key())
    assert albatross_ext(sub) == (5, cmd)
    assert_validity(sub, 365 * 86400)
    assert open("db").read().splitlines()[-1] == raw_serial(sub).hex() + " user"


def test_sign_create_csr_with_sub_ca_gives_leaf_and_chain(cwd):
    make_root(cwd)
    assert client("sign", "cacert.pem", "db", "ca.key", csr_file("user", m.PolicyAdd(USER_POLICY))) == 0
    cmd = m.UnikernelCreate(UnikernelConfig(image=b"\x7fELF...", cpuids=frozenset({1}), memory=64,
                                            bridges=(NetDevice("service"),), argv=("--hello=hi",)))
    assert client("sign", "user.pem", "db", "user.key", csr_file("hello", cmd)) == 0
    leaf, sub = load("hello.pem")
    assert sub == load("user.pem")[0]
    assert_end_entity(leaf, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert_key_ids(leaf, sub.public_key())
    assert albatross_ext(leaf) == (5, cmd)
    assert_validity(leaf, 86400)
    assert len(open("db").read().splitlines()) == 3
    # --days overrides the default
    assert client("sign", "user.pem", "db", "user.key", "hello.req", "--days", "3") == 0
    assert_validity(load("hello.pem")[0], 3 * 86400)


def test_sign_other_command_is_leaf_for_one_day_and_no_extension_is_server(cwd, capsys):
    make_root(cwd)
    assert client("sign", "cacert.pem", "db", "ca.key", csr_file("info", m.UnikernelInfoCmd())) == 0
    (leaf,) = load("info.pem")
    assert_end_entity(leaf, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert_validity(leaf, 86400)
    key, _ = pki.key_for("host", "ed25519")
    pki.write_file("host.req", pki.make_csr("host", key).public_bytes(serialization.Encoding.PEM))
    assert client("sign", "cacert.pem", "db", "ca.key", "host.req") == 0
    assert "signing certificate without albatross extension" in capsys.readouterr().out
    (host,) = load("host.pem")
    assert_end_entity(host, ExtendedKeyUsageOID.SERVER_AUTH)
    assert OID not in {e.oid.dotted_string for e in host.extensions}
    assert_validity(host, 365 * 86400)


@pytest.mark.parametrize("cmd,message", [
    (m.PolicyAdd(Policy(1, frozenset({0}), 16, None, frozenset())), "Unusable policy with memory 16 MB <= 16 MB"),
    (m.PolicyAdd(Policy(0, frozenset({0}), 64, None, frozenset())), "Unusable policy with no unikernels"),
    (m.PolicyAdd(Policy(32, frozenset({0}), 64, None, frozenset())), "policy above allows 16 unikernels"),
    (m.PolicyAdd(Policy(2, frozenset({0, 5}), 64, None, frozenset())), "policy above does not allow CPUids 5"),
    (m.PolicyAdd(Policy(2, frozenset({0}), 64, 10, frozenset())), "block storage"),
    (m.UnikernelCreate(UnikernelConfig(cpuids=frozenset({3}))), "the CPUids 3 requested by the unikernel"),
    (m.UnikernelCreate(UnikernelConfig(memory=2048)), "2048 MB memory assigned to unikernel exceeds policy"),
    (m.UnikernelCreate(UnikernelConfig(bridges=(NetDevice("net", "other"),)), force=True),
     "Bridge(s) other not allowed by policy"),
])
def test_sign_checks_against_the_issuer_policy(cwd, capsys, cmd, message):
    make_root(cwd)
    assert client("sign", "cacert.pem", "db", "ca.key", csr_file("user", m.PolicyAdd(USER_POLICY))) == 0
    lines = len(open("db").read().splitlines())
    assert client("sign", "user.pem", "db", "user.key", csr_file("sub", cmd)) == 124
    out = capsys.readouterr().out
    assert "error while signing: " in out and message in out
    assert not os.path.exists("sub.pem")
    assert len(open("db").read().splitlines()) == lines


def test_sign_rejects_bad_csr_signature(cwd, capsys):
    make_root(cwd)
    csr_file("user", m.PolicyAdd(USER_POLICY))
    der = bytearray(x509.load_pem_x509_csr(open("user.req", "rb").read()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1  # flip a bit of the signature
    csr = x509.load_der_x509_csr(bytes(der))
    pki.write_file("bad.req", csr.public_bytes(serialization.Encoding.PEM))
    assert client("sign", "cacert.pem", "db", "ca.key", "bad.req") == 124
    assert "CSR signature verification failed" in capsys.readouterr().out


# ------------------------------------------------------- ephemeral leaves

COMMANDS = [
    m.UnikernelInfoCmd(), m.UnikernelDestroy(), m.UnikernelGet(9),
    m.UnikernelRestart(None), m.UnikernelRestart(UnikernelArguments(memory=64, argv=("a",))),
    m.UnikernelCreate(UnikernelConfig(image=b"img", compressed=True, fail_behaviour=FailBehaviour(True, {1}),
                                      block_devices=(BlockDevice("data", "disk", 4096),), startup=3)),
    m.UnikernelCreate(UnikernelConfig(typ="bhyve"), force=True),
    m.PolicyInfoCmd(), m.PolicyAdd(USER_POLICY), m.PolicyRemove(),
    m.BlockInfoCmd(), m.BlockAdd(100), m.BlockRemove(), m.BlockSet(True), m.BlockDump(9),
    m.ConsoleSubscribe(count=20), m.ConsoleSubscribe(since=Ptime.of_float(1678664535.0)),
    m.ConsoleListInactive(), m.StatsSubscribe(),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.cmd)
def test_ephemeral_leaf_profile_and_command_round_trip(cmd):
    root_key = pki.generate_key()
    root = pki.self_signed_ca("ca", root_key, 1)
    leaf, key = pki.ephemeral_leaf(root, root_key, "hello", cmd)
    assert pki.key_matches(key, leaf)
    assert_end_entity(leaf, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert_key_ids(leaf, root.public_key())
    assert_validity(leaf, 300)
    assert albatross_ext(leaf) == (5, cmd)
    assert pki.certificate_command(leaf) == (5, cmd)


def test_ephemeral_leaf_checks():
    root_key = pki.generate_key()
    root = pki.self_signed_ca("ca", root_key, 1)
    sub_key = pki.generate_key()
    sub = pki.sign_csr(root, root_key, pki.make_csr("user", sub_key, m.PolicyAdd(USER_POLICY))).cert
    with pytest.raises(pki.PkiError, match="Public key of certificate doesn't match private key"):
        pki.ephemeral_leaf(sub, root_key, "x", m.UnikernelInfoCmd())
    with pytest.raises(PolicyError, match="exceeds policy"):
        pki.ephemeral_leaf(sub, sub_key, "x", m.UnikernelCreate(UnikernelConfig(memory=4096)))
    with pytest.raises(PolicyError, match="policy above allows 16 unikernels"):
        pki.ephemeral_leaf(sub, sub_key, "x", m.PolicyAdd(Policy(17, frozenset({0}), 64, None, frozenset())))
    with pytest.raises(pki.PkiError, match="certificate too big for TLS"):
        pki.ephemeral_leaf(sub, sub_key, "x", m.UnikernelCreate(UnikernelConfig(image=b"x" * 5000)),
                           max_size=4096)
    leaf, _ = pki.ephemeral_leaf(sub, sub_key, "x", m.UnikernelCreate(UnikernelConfig(image=b"x" * 100)))
    assert leaf.issuer == sub.subject


def test_files_and_errors(cwd):
    with pytest.raises(pki.PkiError, match="couldn't read"):
        pki.load_certs("missing.pem")
    open("junk.pem", "w").write("not pem")
    with pytest.raises(pki.PkiError):
        pki.load_certs("junk.pem")
    with pytest.raises(pki.PkiError):
        pki.load_key("junk.pem")
    with pytest.raises(pki.PkiError, match="unknown key type"):
        pki.generate_key("dsa")
