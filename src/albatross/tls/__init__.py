"""Albatross's PKI and TLS side.

* :mod:`.pki`: keys, certificate profiles, CSRs, signing, the CA db file,
  serial numbers, PEM chains;
* :mod:`.chain`: x509 validation of a chain as upstream's ocaml-x509 does it,
  the albatross processing of a validated client chain (name, policies,
  command), and blocking TLS 1.3 streams over pyOpenSSL.
"""
