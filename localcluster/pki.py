"""Certificates and credentials of the local control plane, made with openssl.

One CA signs a serving certificate for 127.0.0.1/localhost that the API server, Kueue's
webhook server and Kueue's metrics server all present; a separate RSA key signs
ServiceAccount tokens; the admin identity is a static bearer token in group system:masters.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVING_SANS = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_crt(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "tls.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def tokens_csv(self) -> Path:
        return self.dir / "tokens.csv"

    @property
    def admin_token_file(self) -> Path:
        return self.dir / "admin.token"

    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def client_certificate(self, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate (CN=user, O=each group) signed by the CA, made once per user: (certificate, key).

        The API server takes it without a restart, so each operator replica in a test can be its own user (the
        audit log then tells their writes apart)."""
        folder = self.dir / "clients"
        crt, key = folder / f"{user}.crt", folder / f"{user}.key"
        if crt.exists() and key.exists():
            return crt, key
        folder.mkdir(parents=True, exist_ok=True)
        csr = folder / f"{user}.csr"
        subject = f"/CN={user}" + "".join(f"/O={group}" for group in groups)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", csr)
        ext = folder / f"{user}.ext"
        ext.write_text("keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key, "-CAcreateserial",
            "-days", "30", "-extfile", ext, "-out", crt,
        )  # fmt: skip
        key.chmod(0o600)
        return crt, key

    def exists(self) -> bool:
        files = (self.ca_crt, self.serving_crt, self.serving_key, self.sa_key, self.sa_pub, self.tokens_csv)
        return all(f.exists() for f in files)

    def ensure(self) -> None:
        """Create whatever is missing; existing material is kept so running components stay valid."""
        if self.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", "/CN=loka-local-ca", "-keyout", self.ca_key, "-out", self.ca_crt,
        )  # fmt: skip
        csr = self.dir / "tls.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                 "-keyout", self.serving_key, "-out", csr)  # fmt: skip
        ext = self.dir / "tls.ext"
        ext.write_text(
            f"subjectAltName={SERVING_SANS}\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key, "-CAcreateserial",
            "-days", "3650", "-extfile", ext, "-out", self.serving_crt,
        )  # fmt: skip
        _openssl("genrsa", "-out", self.sa_key, "2048")
        _openssl("rsa", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)
        token = secrets.token_hex(24)
        self.admin_token_file.write_text(token + "\n")
        self.tokens_csv.write_text(f'{token},admin,admin,"system:masters"\n')
        for f in self.dir.iterdir():
            f.chmod(0o600)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
