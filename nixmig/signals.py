"""Signals sent around runs, so projects can hook notifications or cache clearing.

``pre_sqlmigrate(direction, database, plan, fake)`` before the first migration of a run;
``post_sqlmigrate(direction, database, result)`` after the last one succeeded;
``pre_migration(direction, database, migration_id)`` / ``post_migration(..., ms)`` around each.
"""

from django.dispatch import Signal

pre_sqlmigrate = Signal()
post_sqlmigrate = Signal()
pre_migration = Signal()
post_migration = Signal()
