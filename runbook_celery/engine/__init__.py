"""The worker side: the Celery app and result backend, dispatch, the step task and
what it runs (Bash, containment, leases), recovery, poison messages, the notifier."""
