"""HTTPS servers on loopback that play a box's /readyz, with self-made certs."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_cert(tmp: Path, names: list[str], days: float) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp / f"{names[0]}-{days}.crt"
    key_path = tmp / f"{names[0]}-{days}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Box:
    """An HTTPS server on loopback that plays one box's /readyz."""

    def __init__(self, cert: tuple[Path, Path], ready: bool = True,
                 flat: bool = False):
        self.ready = ready
        self.flat = flat
        self.requests: list[tuple[str, str, str | None]] = []
        box = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                sni = getattr(self.connection, "sni_seen", None)
                box.requests.append((self.path, self.headers["Host"], sni))
                progress = {
                    "ready": box.ready,
                    "docs_read": 42,
                    "lag_seconds": 0.5 if box.ready else None,
                    "last_error": None if box.ready else "primary refused",
                }
                # The app's shape: readiness on top, sync progress nested.
                shape = {"ready": box.ready, "sync": progress}
                body = json.dumps(progress if box.flat else shape).encode()
                self.send_response(200 if box.ready else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)

        def remember_sni(sock, name, _context):
            sock.sni_seen = name

        context.sni_callback = remember_sni
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True
        )
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
