"""Pure: a workflow file to a validated ``Workflow`` (no Celery, no Redis, no I/O
beyond reading the definition): YAML, model, expressions, graph, cron, Bash placement."""
