"""A development server of another app, named as django-extensions names its own (``runserver_plus``).

It is Django's ``runserver`` under another name: the test checks that nixmig's pending-migration
warning reaches the system checks of such a server too, not only of a command named ``runserver``.
"""

from django.core.management.commands.runserver import Command as RunserverCommand


class Command(RunserverCommand):
    help = "Django's runserver under the name of django-extensions' development server (tests only)."
