"""Public path kept for users: ``runbook_celery.events`` is ``runbook_celery.store.events``."""
# relayout: public shim

from .store.events import *  # noqa: F403
from .store.events import __all__ as __all__
