"""x509 validation (certificates.md §3.2) and albatross processing of a
validated chain (§3.3; features NAM-08, TLS-05, TLS-06)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from albatross.core import Policy, UnikernelConfig
from albatross.policy.names import Name
from albatross.tls import pki
from albatross.tls.chain import ChainError, allowed_command, process_chain, validate_chain
from albatross.wire import messages as m

from fake_daemons import Pki

P_USER = Policy(16, frozenset({0, 1}), 1024, None, frozenset({"service"}))
P_SMALL = Policy(2, frozenset({0}), 128, None, frozenset())
INFO = m.UnikernelInfoCmd()


@pytest.fixture(scope="module")
def ca():
    return Pki()


@pytest.fixture(scope="module")
def user(ca):
    return ca.sub_ca("user", P_USER)


def chain_for(ca, user, leaf_cn, cmd=INFO):
    leaf, _ = ca.leaf(leaf_cn, cmd, *user)
    return validate_chain([leaf, user[0]], [ca.ca], tls_client=True)


# --------------------------------------------------------------- processing

def test_name_is_path_of_sub_ca_cns_plus_leaf_cn(ca, user):
    req = process_chain(chain_for(ca, user, "Hello"))
    assert req.name == Name(("user",), "hello")
    assert req.name.to_string() == "user:hello"
    assert req.policies == [(("user",), P_USER)]
    assert (req.version, req.command) == (5, INFO)


@pytest.mark.parametrize("cn", [".", ":", None])
def test_dot_colon_or_absent_leaf_cn_is_path_only(ca, user, cn):
    req = process_chain(chain_for(ca, user, cn))
    assert req.name == Name.of_path(("user",))
    assert req.name.to_string() == "user:"


def test_leaf_signed_by_root_lands_in_root_path(ca):
    leaf, _ = ca.leaf("hello", INFO)
    req = process_chain(validate_chain([leaf], [ca.ca]))
    assert req.name.to_string() == ":hello" and req.policies == []


def test_policies_deepest_first_and_plain_cas_skipped(ca):
    a, a_key = ca.sub_ca("a", P_USER)
    # an intermediate without the albatross extension: no label, no policy
    plain_key = pki.generate_key()
    plain = pki.issue(pki.cn_name("plain"), plain_key.public_key(), a.subject, a_key,
                      pki.profile_extensions(pki.Profile.CA), 3600)
    b, b_key = ca.sub_ca("B", P_SMALL, plain, plain_key)
    leaf, _ = ca.leaf("x", INFO, b, b_key)
    path = validate_chain([leaf, b, plain, a], [ca.ca])
    assert len(path) == 4
    req = process_chain(path)
    assert req.name.to_string() == "a:b:x"
    assert req.policies == [(("a", "b"), P_SMALL), (("a",), P_USER)]


def test_chain_of_ten_is_too_long(ca):
    issuer, key = ca.ca, ca.ca_key
    certs = []
    for i in range(9):
        issuer, key = ca.sub_ca(f"l{i}", P_USER, issuer, key)
        certs.insert(0, issuer)
    leaf, _ = ca.leaf("x", INFO, issuer, key)
    path = validate_chain([leaf] + certs, [ca.ca])
    assert len(path) == 10
    with pytest.raises(ChainError, match="certificate chain too long"):
        process_chain(path)
    nine = [leaf] + certs[:-1]  # without the top-most sub-CA: 9 certificates are fine
    assert len(process_chain(nine).policies) == 8


@pytest.mark.parametrize("cn,cmd,message", [
    ("hello", None, "leaf certificate does not contain an albatross extension"),
    ("hello", m.PolicyAdd(P_SMALL), "unexpected command"),
    ("hello", m.PolicyRemove(), "unexpected command"),
    ("hello", m.ConsoleAdd(3), "unexpected command"),
    ("hello", m.StatsRemove(), "unexpected command"),
    ("hello", m.StatsInitial(), "unexpected command"),
    ("a:b", INFO, "invalid label"),
    ("hello world", INFO, "invalid label"),
    ("-x", INFO, "invalid label"),
    ("x" * 64, INFO, "invalid label"),
    (None, m.BlockAdd(10), "block add may not have an empty name"),
    (None, m.BlockDump(0), "block dump may not have an empty name"),
    (None, m.BlockSet(False), "block set may not have an empty name"),
])
def test_rejected_leaves(ca, user, cn, cmd, message):
    with pytest.raises(ChainError, match=message):
        process_chain(chain_for(ca, user, cn, cmd))


@pytest.mark.parametrize("cmd", [
    m.ConsoleSubscribe(count=20), m.ConsoleListInactive(), m.StatsSubscribe(), m.PolicyInfoCmd(),
    m.UnikernelInfoCmd(), m.UnikernelDestroy(), m.UnikernelGet(0), m.UnikernelRestart(None),
    m.UnikernelCreate(UnikernelConfig()), m.OldUnikernelInfo4(), m.OldUnikernelInfo5(),
    m.BlockInfoCmd(), m.BlockAdd(1), m.BlockRemove(), m.BlockSet(False), m.BlockDump(1),
    m.OldBlockDump(1), m.OldBlockSet(False, b""), m.OldBlockAdd(1, False, None),
])
def test_allowed_commands(ca, user, cmd):
    assert allowed_command(cmd)
    assert process_chain(chain_for(ca, user, "x", cmd)).command == cmd


def test_block_info_and_policy_info_without_cn_are_path_only(ca, user):
    assert process_chain(chain_for(ca, user, None, m.BlockInfoCmd())).name.to_string() == "user:"
    assert process_chain(chain_for(ca, user, None, m.PolicyInfoCmd())).name.to_string() == "user:"


def test_intermediate_problems(ca):
    # a sub-CA carrying a non-policy command
    bad, bad_key = ca.leaf("weird", INFO, extensions=pki.profile_extensions(pki.Profile.CA)
                           + [(pki.albatross_extension(INFO), False)])
    leaf, _ = ca.leaf("x", INFO, bad, bad_key)
    with pytest.raises(ChainError, match="unexpected wire unikernel info"):
        process_chain(validate_chain([leaf, bad], [ca.ca]))
    # a sub-CA whose CN is not a label (e.g. `add-policy a:b --csr`)
    ab, ab_key = ca.sub_ca("a:b", P_USER, check=False)
    leaf, _ = ca.leaf("x", INFO, ab, ab_key)
    with pytest.raises(ChainError, match="invalid label"):
        process_chain(validate_chain([leaf, ab], [ca.ca]))
    # a sub-CA with a policy but no CN
    anon, anon_key = ca.sub_ca(None, P_USER, check=False)
    leaf, _ = ca.leaf("x", INFO, anon, anon_key)
    with pytest.raises(ChainError, match="policy add may not have an empty name"):
        process_chain(validate_chain([leaf, anon], [ca.ca]))


def test_malformed_extension(ca, user):
    garbage = x509.UnrecognizedExtension(pki.ALBATROSS_OID, b"\x30\x03\x02\x01\x04")  # version 4
    leaf, _ = ca.leaf("x", None, *user, extensions=pki.profile_extensions(pki.Profile.LEAF) + [(garbage, False)])
    with pytest.raises(ChainError, match="albatross extension"):
        process_chain(validate_chain([leaf, user[0]], [ca.ca]))
    junk = x509.UnrecognizedExtension(pki.ALBATROSS_OID, b"\x01\x02")
    leaf, _ = ca.leaf("x", None, *user, extensions=pki.profile_extensions(pki.Profile.LEAF) + [(junk, False)])
    with pytest.raises(ChainError, match="albatross extension"):
        process_chain(validate_chain([leaf, user[0]], [ca.ca]))


# --------------------------------------------------------------- validation

def test_validated_path_excludes_the_anchor_unless_sent(ca, user):
    leaf, _ = ca.leaf("x", INFO, *user)
    assert validate_chain([leaf, user[0]], [ca.ca]) == [leaf, user[0]]
    assert validate_chain([leaf, user[0], ca.ca], [ca.ca]) == [leaf, user[0], ca.ca]


def test_wrong_anchor_missing_intermediate_and_expired(ca, user):
    other = Pki("other")
    leaf, _ = ca.leaf("x", INFO, *user)
    with pytest.raises(ChainError, match="validation failed"):
        validate_chain([leaf, user[0]], [other.ca])
    with pytest.raises(ChainError, match="validation failed"):
        validate_chain([leaf], [ca.ca])
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    expired, _ = ca.leaf("x", INFO, *user, now=old, validity=3600)
    with pytest.raises(ChainError, match="expired"):
        validate_chain([expired, user[0]], [ca.ca])


def test_issuer_needs_key_cert_sign_and_ca(ca):
    no_sign = [(x509.BasicConstraints(ca=True, path_length=None), True),
               (x509.KeyUsage(True, False, False, False, False, False, True, False, False), True)]
    issuer, issuer_key = ca.leaf("sub", m.PolicyAdd(P_USER), extensions=no_sign
                                 + [(pki.albatross_extension(m.PolicyAdd(P_USER)), False)])
    leaf, _ = ca.leaf("x", INFO, issuer, issuer_key)
    with pytest.raises(ChainError):
        validate_chain([leaf, issuer], [ca.ca])
    # an end-entity certificate used as issuer
    ee, ee_key = ca.leaf("ee", INFO)
    leaf, _ = ca.leaf("x", INFO, ee, ee_key)
    with pytest.raises(ChainError):
        validate_chain([leaf, ee], [ca.ca])


def test_leaf_must_not_be_a_ca_and_client_leaf_needs_client_auth(ca):
    leaf, _ = ca.leaf("x", INFO, extensions=pki.profile_extensions(pki.Profile.CA)
                      + [(pki.albatross_extension(INFO), False)])
    with pytest.raises(ChainError, match="leaf certificate is a CA"):
        validate_chain([leaf], [ca.ca])
    server_like, _ = ca.leaf("x", INFO, extensions=pki.profile_extensions(pki.Profile.SERVER)
                             + [(pki.albatross_extension(INFO), False)])
    assert validate_chain([server_like], [ca.ca])  # x509 rules alone accept it
    with pytest.raises(ChainError, match="clientAuth"):
        validate_chain([server_like], [ca.ca], tls_client=True)


def test_critical_albatross_extension_is_rejected(ca):
    leaf, _ = ca.leaf("x", None, extensions=pki.profile_extensions(pki.Profile.LEAF)
                      + [(pki.albatross_extension(INFO), True)])
    with pytest.raises(ChainError):
        validate_chain([leaf], [ca.ca])


def test_only_sha2_or_ed25519_signatures():
    key = rsa.generate_private_key(65537, 2048)
    name = pki.cn_name("rsa-ca")
    now = dt.datetime.now(dt.timezone.utc)

    def build(subject, pub, exts):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(name).public_key(pub)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1)))
        for e, c in exts:
            b = b.add_extension(e, critical=c)
        return b
    root = build(name, key.public_key(), pki.profile_extensions(pki.Profile.CA)).sign(key, hashes.SHA256())
    leaf_key = pki.generate_key()
    exts = pki.profile_extensions(pki.Profile.LEAF) + [(pki.albatross_extension(INFO), False)]
    good = build(pki.cn_name("x"), leaf_key.public_key(), exts).sign(key, hashes.SHA256())
    assert validate_chain([good], [root]) == [good]

    class Stub:  # cryptography >= 46 cannot sign with SHA-1 any more: check the rule itself
        def __init__(self, h):
            self.signature_hash_algorithm = h

        def public_key(self):
            return key.public_key()
    assert not pki.allowed_signature(Stub(hashes.SHA1()))
    assert not pki.allowed_signature(Stub(hashes.SHA224()))
    assert pki.allowed_signature(Stub(hashes.SHA384()))
    assert not pki.allowed_signature(Stub(None))  # no hash is only fine for Ed25519


class _Conn:
    """What the verify callback sees of a connection: its app data."""

    def __init__(self, data):
        self.data = data

    def get_app_data(self):
        return self.data


def test_verify_callback_records_instead_of_raising(ca, user, monkeypatch):
    """The callback never raises (pyOpenSSL would re-raise it in another
    connection of the context): it keeps the first reason on its own
    connection and refuses."""
    from OpenSSL import crypto

    from albatross.tls import chain
    leaf, _ = ca.leaf("hello", INFO, *user)
    cert = crypto.X509.from_cryptography(leaf)
    cb = chain._verify_callback([ca.ca], tls_client=True)
    problems: list = []
    conn = _Conn(problems)
    assert cb(conn, cert, 0, 0, 1) is True and problems == []
    assert cb(conn, cert, 10, 0, 0) is False  # X509_V_ERR_CERT_HAS_EXPIRED
    assert [str(p) for p in problems] == ["certificate verification failed at depth 0: certificate has expired"]
    assert cb(conn, cert, 20, 1, 0) is False and len(problems) == 1  # the first reason is kept

    def boom(*_a, **_kw):
        raise RuntimeError("boom")
    monkeypatch.setattr(chain, "check_path_cert", boom)
    other: list = []
    assert cb(_Conn(other), cert, 0, 0, 1) is False
    assert len(other) == 1 and isinstance(other[0], ChainError) and str(other[0]) == "certificate check failed: boom"
    assert cb(_Conn(None), cert, 0, 0, 1) is False  # a connection without a record is still refused


# ------------------------------------------- same-named issuers (issue 13)

def _no_key_ids(cn, issuer_name, issuer_key, profile, cmd=None):
    """A certificate without key identifiers (as upstream's root CAs): only
    the name links it to its issuer."""
    key = pki.generate_key()
    exts = pki.profile_extensions(profile) + ([(pki.albatross_extension(cmd), False)] if cmd else [])
    cert = pki.issue(pki.cn_name(cn), key.public_key(), issuer_name, issuer_key, exts, 3600, key_ids=False)
    return cert, key


@pytest.mark.parametrize("signer", [0, 1])
@pytest.mark.parametrize("order", ["old first", "new first"])
def test_every_anchor_of_the_same_name_is_tried(signer, order):
    """A renewed CA trusted beside the old one, both named 'ca': a chain of
    either validates whatever their order (upstream tries every CA whose
    name matches; OpenSSL alone picks the first)."""
    cas = [Pki("ca"), Pki("ca")]
    anchors = [c.ca for c in cas] if order == "old first" else [cas[1].ca, cas[0].ca]
    signing = cas[signer]
    user, user_key = _no_key_ids("user", signing.ca.subject, signing.ca_key, pki.Profile.CA, m.PolicyAdd(P_USER))
    leaf, _ = _no_key_ids("x", user.subject, user_key, pki.Profile.LEAF, INFO)
    assert validate_chain([leaf, user], anchors, tls_client=True) == [leaf, user]
    assert validate_chain([signing.server], anchors) == [signing.server]
    # a CA of that name that signed nothing here still fails, with OpenSSL's reason
    with pytest.raises(ChainError, match="certificate signature failure|unable to get local issuer"):
        validate_chain([leaf, user], [cas[1 - signer].ca])


@pytest.mark.parametrize("order", ["signer first", "signer second"])
def test_every_sent_intermediate_of_the_same_name_is_tried(ca, order):
    """A client sending two sub-CAs named 'user' (renewed beside the old):
    the path goes through the one that signed the leaf, and its policy."""
    a, a_key = _no_key_ids("user", ca.ca.subject, ca.ca_key, pki.Profile.CA, m.PolicyAdd(P_USER))
    b, b_key = _no_key_ids("user", ca.ca.subject, ca.ca_key, pki.Profile.CA, m.PolicyAdd(P_SMALL))
    leaf, _ = _no_key_ids("x", b.subject, b_key, pki.Profile.LEAF, INFO)
    sent = [leaf, b, a] if order == "signer first" else [leaf, a, b]
    path = validate_chain(sent, [ca.ca], tls_client=True)
    assert path == [leaf, b]
    assert process_chain(path).policies == [(("user",), P_SMALL)]
    # a leaf signed by neither still fails
    other, other_key = _no_key_ids("user", ca.ca.subject, pki.generate_key(), pki.Profile.CA, m.PolicyAdd(P_USER))
    stray, _ = _no_key_ids("x", other.subject, other_key, pki.Profile.LEAF, INFO)
    with pytest.raises(ChainError):
        validate_chain([stray, a, b], [ca.ca], tls_client=True)
