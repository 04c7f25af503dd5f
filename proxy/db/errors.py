"""Telling a database that is unreachable (wait and retry) from one that refuses a write
(retrying the same write can never succeed)."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

__all__ = ["DB_ERRORS", "is_missing_database", "is_unavailable"]

# Everything a database call may raise that accounting must survive.
DB_ERRORS: tuple[type[BaseException], ...] = (sa_exc.SQLAlchemyError, OSError, TimeoutError)

# SQLSTATE classes that say "not now" rather than "not this": connection exception,
# insufficient resources, operator intervention (shutdown), transaction rollback (deadlock,
# serialization failure).
_TRANSIENT_CLASSES = ("08", "53", "57", "40")


def is_unavailable(exc: BaseException) -> bool:
    """True when the database could not be reached or was busy, so the same write may succeed
    later; False when it refused the write itself (bad data, constraint, SQL error)."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc.orig)
        if state is not None:
            return state[:2] in _TRANSIENT_CLASSES
        # No SQLSTATE (SQLite, or a driver-level failure): operational and interface errors are
        # "database is locked", "unable to open", "connection was closed".
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.SQLAlchemyError) and not isinstance(exc, sa_exc.StatementError)


def is_missing_database(exc: BaseException) -> bool:
    """True when PostgreSQL says the URL's database does not exist (SQLSTATE 3D000)."""
    return isinstance(exc, sa_exc.DBAPIError) and _sqlstate(exc.orig) == "3D000"


def _sqlstate(orig: BaseException | None) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        state = getattr(orig, attr, None)
        if isinstance(state, str) and len(state) == 5:
            return state
    cause = getattr(orig, "__cause__", None)
    if cause is not None and cause is not orig:
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None
