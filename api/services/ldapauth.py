"""Signing a user in against an organisation's LDAP server: search, then bind as the user.

1. Bind as the organisation's service account (``bind_dn``; the password from the state directory).
2. Find the user with ``user_filter`` under ``user_base`` ({username} escaped, RFC 4515, so a login
   name cannot widen the filter); exactly one entry, or the credentials are wrong.
3. Bind as that entry with the password given (never an empty one: LDAP takes an empty
   password for an anonymous bind, which "succeeds").
4. Read the user's groups with ``group_filter`` under ``group_base``: their names (cn) and DNs
   are what the organisation's role map is matched against, at every sign-in.

With ``ldaps://`` or ``start_tls`` the server's certificate is verified (the organisation's
``ca_cert``, else the system's CAs). Every step has the directory's ``timeout_s``. A directory that does not answer, or refuses the
service account, is DirectoryUnavailable (503) naming the organisation and the URL; a wrong
password or an unknown user is None (the caller answers one 401 for both).
"""

from __future__ import annotations

import logging
import math
import ssl
from dataclasses import dataclass
from typing import Any

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPStartTLSError
from ldap3.utils.conv import escape_filter_chars

from cloudland.errors import DirectoryUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LdapUser:
    """Who the directory says signed in: their entry's DN and the names and DNs of their groups."""

    dn: str
    groups: list[str]


def _entries(connection: Connection) -> list[dict[str, Any]]:
    return [e for e in connection.response or [] if e.get("type") == "searchResEntry"]


def authenticate(organisation: str, settings: dict[str, Any], bind_password: str, username: str,
                 password: str) -> LdapUser | None:
    """The user ``username`` if ``password`` is theirs in the directory, else None; raises
    DirectoryUnavailable when the directory cannot be asked."""
    url, timeout = settings["url"], float(settings["timeout_s"])
    receive_timeout = max(1, math.ceil(timeout))  # ldap3 packs it into SO_RCVTIMEO as whole seconds
    where = f"organisation {organisation!r}'s LDAP directory {url}"
    if not password:
        return None
    # TLS (ldaps:// or start_tls) always verifies the server's certificate and name: against the
    # organisation's ``ca_cert`` (PEM) when given, else the system's CAs.
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=settings.get("ca_cert") or None)
    server = Server(url, connect_timeout=timeout, get_info=NONE, tls=tls)
    service = Connection(server, user=settings["bind_dn"], password=bind_password, receive_timeout=receive_timeout,
                         read_only=True, auto_referrals=False)
    try:
        if settings.get("start_tls"):
            service.open()
            service.start_tls()
        if not service.bind():
            raise DirectoryUnavailable(f"{where} refused CloudLand's bind as {settings['bind_dn']!r} "
                                       f"({service.result.get('description')}): check the organisation's LDAP settings")
        query = settings["user_filter"].format(username=escape_filter_chars(username))
        service.search(settings["user_base"], query, SUBTREE, attributes=[], size_limit=2)
        found = _entries(service)
        if len(found) != 1:
            return None
        dn = found[0]["dn"]
        user = Connection(server, user=dn, password=password, receive_timeout=receive_timeout, read_only=True)
        try:
            if settings.get("start_tls"):
                user.open()
                user.start_tls()
            if not user.bind():
                return None
        finally:
            user.unbind()
        query = settings["group_filter"].format(dn=escape_filter_chars(dn), username=escape_filter_chars(username))
        service.search(settings["group_base"], query, SUBTREE, attributes=["cn"])
        groups: list[str] = []
        for entry in _entries(service):
            groups.append(entry["dn"])
            cn = entry.get("attributes", {}).get("cn") or []
            groups.extend([cn] if isinstance(cn, str) else cn)
        return LdapUser(dn, groups)
    except LDAPException as exc:
        log.warning("event=ldap_unavailable organisation=%s url=%s error=%s", organisation, url, type(exc).__name__)
        tls = isinstance(exc, LDAPStartTLSError) or "SSL" in str(exc)
        what = "failed TLS verification (check its ca_cert)" if tls else "did not answer"
        raise DirectoryUnavailable(f"{where} {what} ({type(exc).__name__}: {exc}); "
                                   "local accounts can still sign in") from exc
    finally:
        try:
            service.unbind()
        except LDAPException:  # the connection is broken already: nothing to close politely
            pass
