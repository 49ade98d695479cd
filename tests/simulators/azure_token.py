"""An Azure AD (Microsoft Entra ID) token endpoint simulator: OAuth 2.0 client credentials.

Faithful to the Microsoft identity platform's public behaviour for service principals:
``POST /{tenant}/oauth2/v2.0/token`` with a form body ``grant_type=client_credentials``,
``client_id``, ``client_secret`` and ``scope`` (``<resource>/.default``) answers
``{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}``; an unknown
client or a wrong secret gets 401 ``invalid_client`` (``AADSTS7000215``), an unknown
tenant 400 ``invalid_request`` (``AADSTS90002``). The access token is a JWT whose
``iss`` (``https://sts.windows.net/<tenant>/``), ``aud`` (the scope's resource), ``nbf``,
``iat`` and ``exp`` are what Azure Storage checks (Azurite's ``--oauth basic`` checks
exactly those and not the signature).

It serves HTTPS (the credential refuses plain HTTP authorities) with the test
certificate, in a thread of the test's process, on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.services.tls import TestCertificate


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AzureTokenSimulator:
    """The token endpoint of one tenant with its service principals (``client_id`` ->
    ``client_secret``). ``authority`` is what a credential's ``authority`` takes;
    ``requests`` counts the token requests answered 200."""

    def __init__(self, certificate: TestCertificate, tenant_id: str, principals: dict[str, str],
                 lifetime: int = 3600) -> None:
        self.tenant_id = tenant_id
        self.principals = dict(principals)
        self.lifetime = lifetime
        self.requests = 0
        self.refused = 0
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = simulator.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate.cert, certificate.key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.authority = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for a POST to ``path`` with ``form``."""
        parts = path.strip("/").split("/")
        if parts[1:] != ["oauth2", "v2.0", "token"]:
            return 404, {"error": "invalid_request", "error_description": f"no endpoint {path}"}
        if parts[0] != self.tenant_id:
            return 400, {"error": "invalid_request",
                         "error_description": f"AADSTS90002: Tenant '{parts[0]}' not found."}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type",
                         "error_description": "AADSTS70003: The app requested an unsupported grant type."}
        client_id = form.get("client_id", "")
        if self.principals.get(client_id) is None or self.principals[client_id] != form.get("client_secret"):
            self.refused += 1
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the "
                                              f"secret being sent in the request is the client secret value, "
                                              f"not the client secret ID, for a secret added to app '{client_id}'."}
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return 400, {"error": "invalid_scope",
                         "error_description": f"AADSTS1002012: The provided value for scope {scope} is not valid."}
        now = int(time.time())
        claims = {"aud": scope.removesuffix("/.default"), "iss": f"https://sts.windows.net/{self.tenant_id}/",
                  "iat": now, "nbf": now - 60, "exp": now + self.lifetime, "appid": client_id,
                  "tid": self.tenant_id, "oid": client_id, "sub": client_id}
        token = ".".join([_b64(json.dumps({"typ": "JWT", "alg": "RS256"}).encode()),
                          _b64(json.dumps(claims).encode()), _b64(b"simulator-signature")])
        self.requests += 1
        return 200, {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                     "access_token": token}

    def __enter__(self) -> AzureTokenSimulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
