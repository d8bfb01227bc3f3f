import os

from nixmig.startup import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django's application; first applies pending SQL migrations when NIXMIG["APPLY_ON_STARTUP"] is on.
application = get_asgi_application()
