"""Apply pending SQL migrations when the WSGI/ASGI application loads (``NIXMIG['APPLY_ON_STARTUP']``).

Use it in ``wsgi.py`` / ``asgi.py`` in place of Django's function of the same name::

    from nixmig.startup import get_wsgi_application
    application = get_wsgi_application()

Several workers or replicas starting at once serialise on the migration lock: the
first applies, the others wait, re-read the tracking table under the lock and find
nothing left, so each migration is applied once. A failure raises the same error as
``sqlmigrate_up`` and so stops the worker before it serves a request.

It runs at application load, not in ``AppConfig.ready()``: ``ready()`` also runs for
every management command and test, where touching the database is wrong.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

from django.core.management.base import OutputWrapper
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections

from . import api, conf, databases
from .api import RunResult
from .exceptions import NixmigError
from .management.base import EventRenderer


def startup_databases() -> list[str]:
    """Return the aliases APPLY_ON_STARTUP names: True means 'default'; a list names several."""
    value = conf.get("APPLY_ON_STARTUP")
    if not value:
        return []
    if value is True:
        return [DEFAULT_DB_ALIAS]
    if isinstance(value, str):
        return [value]
    return list(value)


def apply_on_startup(*, stream: TextIO | None = None) -> list[RunResult]:
    """Apply pending migrations to the APPLY_ON_STARTUP databases; raise the run's error if one fails.

    Progress goes to ``stream`` (default: standard error) as whole lines without colour.
    The connections used are closed afterwards, so a pre-forking server's workers never
    share the master's connection.
    """
    aliases = startup_databases()
    if not aliases:
        return []
    out = OutputWrapper(stream or sys.stderr)
    renderer = EventRenderer(out, out, no_style(), verbosity=1)
    results = []
    for alias in databases.select(aliases).aliases:
        if len(aliases) > 1:
            out.write(f"nixmig: database {alias!r}:")
        try:
            result = api.migrate_up(database=alias, progress=renderer)
        except NixmigError as exc:
            renderer.fail_line()
            out.write(
                f"nixmig: SQL migrations of database {alias!r} failed at startup "
                f"(NIXMIG['APPLY_ON_STARTUP']); not starting:\n{exc}"
            )
            raise
        finally:
            connections[alias].close()
        if result.done:
            out.write(
                f"Applied {len(result.done)} migration(s) in {result.seconds:.2f} s; "
                f"skipped {result.skipped} already applied."
            )
        results.append(result)
    return results


def get_wsgi_application():
    """Return Django's WSGI application after applying pending SQL migrations (when configured)."""
    from django.core.wsgi import get_wsgi_application as django_wsgi

    application = django_wsgi()
    apply_on_startup()
    return application


def get_asgi_application():
    """Return Django's ASGI application after applying pending SQL migrations (when configured).

    The migrations run in a thread of their own: an ASGI server may load the
    application inside its event loop, where Django refuses synchronous database work.
    """
    from django.core.asgi import get_asgi_application as django_asgi

    application = django_asgi()
    if startup_databases():
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nixmig-startup") as pool:
            pool.submit(apply_on_startup).result()
    return application
