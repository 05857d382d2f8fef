"""The fallbacks of albatross.tls.pki for Debian 12's cryptography 38 (no
``x509.load_pem_x509_certificates``, no ``verify_directly_issued_by``) agree
with cryptography's own functions, run here where both exist."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from albatross.tls import pki

KEY_TYPES = ["ed25519", "p256", "p384", "p521", "rsa2048"]


@pytest.fixture(scope="module")
def certs():
    out = {}
    for kt in KEY_TYPES:
        key = pki.generate_key(kt)
        ca = pki.self_signed_ca(f"ca-{kt}", key, 1)
        leaf_key = pki.generate_key("ed25519")
        out[kt] = (ca, pki.server_certificate(f"srv-{kt}", leaf_key, ca, key, 1))
    return out


@pytest.mark.parametrize("kt", KEY_TYPES)
def test_verify_fallback_accepts_what_cryptography_accepts(certs, kt):
    ca, leaf = certs[kt]
    leaf.verify_directly_issued_by(ca)
    pki._verify_directly_issued_by(leaf, ca)
    pki._verify_directly_issued_by(ca, ca)  # self-signed


@pytest.mark.parametrize("kt", KEY_TYPES)
def test_verify_fallback_refuses_what_cryptography_refuses(certs, kt):
    ca, leaf = certs[kt]
    other_ca, _ = certs["p256" if kt != "p256" else "ed25519"]
    # wrong issuer name
    for check in (leaf.verify_directly_issued_by, lambda i: pki._verify_directly_issued_by(leaf, i)):
        with pytest.raises(ValueError):
            check(other_ca)
    # same name, other key: the signature does not verify
    impostor = pki.self_signed_ca(f"ca-{kt}", pki.generate_key(kt), 1)
    for check in (leaf.verify_directly_issued_by, lambda i: pki._verify_directly_issued_by(leaf, i)):
        with pytest.raises(InvalidSignature):
            check(impostor)


def test_verify_signed_by_without_the_method(certs, monkeypatch):
    ca, leaf = certs["ed25519"]
    other, _ = certs["p256"]
    monkeypatch.delattr(x509.Certificate, "verify_directly_issued_by", raising=False)
    assert not hasattr(leaf, "verify_directly_issued_by")
    assert pki.verify_signed_by(leaf, ca) is True
    assert pki.verify_signed_by(leaf, other) is False


def test_load_certs_fallback(certs, tmp_path, monkeypatch):
    chain = [certs["ed25519"][1], certs["ed25519"][0]]
    path = tmp_path / "chain.pem"
    path.write_bytes(b"junk before\n" + pki.pem_chain(chain) + b"junk after\n")
    expected = pki.load_certs(str(path))
    monkeypatch.delattr(x509, "load_pem_x509_certificates")
    assert pki.load_certs(str(path)) == expected == chain
    (tmp_path / "none.pem").write_text("no certificate here\n")
    with pytest.raises(pki.PkiError, match="no certificate in"):
        pki.load_certs(str(tmp_path / "none.pem"))
