"""Runs inside Flower: pages (/runs), a JSON API (/api/runs) and live streams.

``server.serve()`` starts Flower for our Celery app with these added (one process, one
port, Flower's login and URL prefix). Client side only: it reads runs through the store
and acts through ``api``/``control``, like the CLI; it never imports worker code.
"""
