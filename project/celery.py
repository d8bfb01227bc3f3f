"""The demo project's Celery app, as the Celery docs define one for Django (used by --executor celery).

Run a worker with: celery -A project worker -Q nixmig --prefetch-multiplier 1
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
