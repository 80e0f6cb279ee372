"""Public path kept for users: ``runbook_celery.loader`` is ``runbook_celery.definition.loader``."""
# relayout: public shim

from .definition.loader import *  # noqa: F403
