"""What went wrong with an OPC UA server, in words a plant engineer can act on: the
status code's name and text (OPC UA Part 4 §7.34, Part 6 Annex A) and, where there is
one, what to do about it.

Used by the ``opcua`` receiver's session engine (:mod:`connectors._opcua`) and the
``browse`` command.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

__all__ = ["TRUST_CODES", "USER_CODES", "certificate_uri", "explain", "status_text", "thumbprint", "trust_hint"]

#: Status codes a server answers with when it does not trust the client's certificate.
TRUST_CODES = frozenset({
    "BadSecurityChecksFailed", "BadCertificateUntrusted", "BadCertificateInvalid",
    "BadCertificateIssuerRevocationUnknown", "BadCertificateRevocationUnknown", "BadCertificateUriInvalid",
    "BadCertificateUseNotAllowed", "BadCertificateTimeInvalid", "BadCertificateHostNameInvalid"})
#: Status codes of a refused user identity.
USER_CODES = frozenset({"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
                        "BadUserSignatureInvalid"})


def status_text(code: int) -> str:
    """``Name: text`` of a status code value, e.g. ``BadNodeIdUnknown: The node id refers
    to a node that does not exist in the server address space.``"""
    from asyncua.ua.status_codes import get_name_and_doc

    name, doc = get_name_and_doc(code)
    return f"{name}: {doc}" if doc else name


def explain(exc: BaseException) -> str:
    """One line for ``exc``: a status code's name and text, ``no answer (timeout)``, or the
    exception's type and message."""
    from asyncua import ua

    if isinstance(exc, ua.UaStatusCodeError) and getattr(exc, "code", None) is not None:
        return status_text(exc.code)
    text = str(exc).strip()
    if isinstance(exc, TimeoutError | asyncio.TimeoutError) and not text:
        return "no answer (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def code_name(exc: BaseException) -> str | None:
    """The status code name ``exc`` carries, if any."""
    from asyncua import ua
    from asyncua.ua.status_codes import get_name_and_doc

    if isinstance(exc, ua.UaStatusCodeError) and getattr(exc, "code", None) is not None:
        return get_name_and_doc(exc.code)[0]
    return None


def thumbprint(path: Path) -> str:
    """The SHA-1 thumbprint of the certificate at ``path`` (PEM or DER), lowercase hex, as
    OPC UA servers list the certificates they trust or refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - the thumbprint OPC UA names, not a security use


def trust_hint(certificate: Path) -> str:
    """What to do when the server does not trust ``certificate``."""
    try:
        print_ = f" (SHA-1 thumbprint {thumbprint(certificate)})"
    except Exception:  # noqa: BLE001 - a file gone or not a certificate: the hint without it
        print_ = ""
    return (f"the server does not trust this client's certificate; add {certificate}{print_} to its "
            "trusted client certificates (or trust it among the server's rejected certificates)")


def certificate_uri(path: Path) -> str | None:
    """The application URI in the SubjectAltName of the certificate at ``path``."""
    from cryptography import x509

    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
