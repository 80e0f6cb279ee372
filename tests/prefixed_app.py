"""Our app with kombu's ``global_keyprefix`` set: ``celery -A prefixed_app`` and its clients.

Used by tests/test_brokerlayout_e2e.py, whose processes get the prefix from
``RUNBOOK_TEST_KEYPREFIX``. There is no ``RUNBOOK_*`` setting for it: an operator sets it
on the app's ``broker_transport_options`` like this, and everything that reads kombu's
layout (engine/brokerlayout.py) follows.
"""

from __future__ import annotations

import os

from runbook_celery.engine.app import app

app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "global_keyprefix": os.environ["RUNBOOK_TEST_KEYPREFIX"],
}
