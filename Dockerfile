FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY runbook_celery ./runbook_celery
RUN pip install --no-cache-dir .
COPY definitions ./definitions
CMD ["runbook-celery", "worker"]
