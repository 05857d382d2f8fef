"""PKI subcommands of albatross-client: ``generate``, ``sign`` and
``certificate`` (behaviour.md §7.7, certificates.md §5)."""

from __future__ import annotations

import click

from .. import pretty
from ..errors import AlbatrossError
from ..tls import pki
from .common import CLI_FAILED, KEY_TYPES, SUCCESS, CliError, app, error, info, logging_options, warn


def generate(name: str, db: str, days: int, server: str, server_days: int, key_type: str) -> int:
    """CA key + ``cacert.pem``, server key + ``<server>.pem``, db line."""
    try:
        key, created = pki.key_for(name, key_type)
        if created:
            info(f"creating new {key_type} key {name}.key")
        ca = pki.self_signed_ca(name, key, days)
        pki.write_file("cacert.pem", pki.pem_chain([ca]))
        skey, created = pki.key_for(server, key_type)
        if created:
            info(f"creating new {key_type} key {server}.key")
        cert = pki.server_certificate(server, skey, ca, key, server_days)
        pki.append_db(db, cert, server)
        pki.write_file(server + ".pem", pki.pem_chain([cert]))
    except AlbatrossError as e:
        error(f"error while generating: {e.message}")
        return CLI_FAILED
    return SUCCESS


def sign(cacert: str, db: str, cakey: str, csr_file: str, days: int | None) -> int:
    """Sign a CSR with the CA; ``<CN>.pem`` = [cert] or [cert; CA cert]."""
    try:
        certs = pki.load_certs(cacert)
        ca_key = pki.load_key(cakey)
        csr = pki.load_csr(csr_file)
        # upstream prints the subject in OpenSSL's one-line form: /CN=name
        app("signing certificate with subject "
            + "".join("/" + rdn.rfc4514_string() for rdn in csr.subject.rdns))
        signed = pki.sign_csr(certs[0], ca_key, csr, days)
        for w in signed.warnings:
            warn(w)
        if signed.command is not None:
            app(pretty.command_wrapped("signing ", signed.command))
        pki.append_db(db, signed.cert, signed.certname)
        pki.write_file(signed.certname + ".pem", pki.pem_chain(signed.chain))
    except AlbatrossError as e:
        error(f"error while signing: {e.message}")
        return CLI_FAILED
    return SUCCESS


def register(cli: click.Group) -> None:
    @cli.command("generate")
    @click.argument("name", metavar="NAME")
    @click.argument("db", metavar="DB")
    @click.option("--days", type=int, default=3650, show_default=True, help="Validity of the CA in days.")
    @click.option("--server", default="server", show_default=True, help="Server name.")
    @click.option("--server-days", type=int, default=365, show_default=True,
                  help="Validity for server certificate in days.")
    @click.option("--key-type", type=click.Choice(KEY_TYPES), default="ed25519", show_default=True,
                  help="Asymmetric key type to generate.")
    @logging_options
    def generate_cmd(name, db, days, server, server_days, key_type) -> int:
        """Generates a certificate authority (cacert.pem) and a server certificate."""
        return generate(name, db, days, server, server_days, key_type)

    @cli.command("sign")
    @click.argument("cacert", metavar="CACERT", type=click.Path(exists=True, dir_okay=False))
    @click.argument("db", metavar="DB")
    @click.argument("key", metavar="KEY", type=click.Path(exists=True, dir_okay=False))
    @click.argument("csr", metavar="CSR", type=click.Path(exists=True, dir_okay=False))
    @click.option("--days", type=int, default=None, help="Validity of certificate (in days).")
    @logging_options
    def sign_cmd(cacert, db, key, csr, days) -> int:
        """Sign a certificate signing request."""
        return sign(cacert, db, key, csr, days)

    @cli.command("certificate")
    @click.argument("cert", metavar="CERT", type=click.Path(exists=True, dir_okay=False))
    @click.argument("key", metavar="KEY", type=click.Path(exists=True, dir_okay=False))
    @click.option("-d", "--destination", default=None, metavar="HOST[:PORT]",
                  help="Remote destination to connect to.")
    @click.option("--server-ca", default="cacert.pem", show_default=True,
                  help="The certificate authority used to verify the remote server.")
    @logging_options
    def certificate_cmd(cert, key, destination, server_ca) -> int:
        """Executes the command of the client certificate."""
        if destination is None:
            raise CliError("no destination provided")
        from .remote import run_certificate
        return run_certificate(destination, cert, key, server_ca)
