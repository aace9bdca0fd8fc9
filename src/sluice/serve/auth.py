"""The server's bearer token: who may infer, change routing and control the repository."""

from __future__ import annotations

import hmac

from sluice.errors import HttpError

__all__ = ["BearerAuth"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sluice"'}


class BearerAuth:
    """Checks the credentials a request carries against ``token``; with no token, everyone passes."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def check(self, authorization: str | None) -> None:
        """Pass, or raise a 401 :class:`~sluice.errors.HttpError` with the ``WWW-Authenticate`` challenge.

        ``authorization`` is the ``Authorization`` header's value (``Bearer <token>``), or None.
        """
        if self.token is None:
            return
        if not authorization:
            raise HttpError("missing bearer token: send 'Authorization: Bearer <token>'", 401, dict(_CHALLENGE))
        scheme, _, token = authorization.partition(" ")
        # compare in constant time: a timing difference would leak the token byte by byte
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise HttpError("invalid bearer token", 401, dict(_CHALLENGE))
