# One image for every service of docker-compose.yml (worker, beat, Flower, secrets) and for
# the Kubernetes manifests in deploy/kubernetes.
FROM python:3.11-slim

# A fixed uid/gid, so that files made for it (compose secrets, Kubernetes runAsUser and
# fsGroup) match. Steps run as this user too: give it only what steps may use.
RUN groupadd --system --gid 10001 runbook \
 && useradd --system --uid 10001 --gid runbook --create-home --home-dir /home/runbook \
      --shell /usr/sbin/nologin runbook \
 && install -d -o runbook -g runbook -m 0750 /var/lib/flower

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runbook_celery ./runbook_celery
RUN pip install --no-cache-dir .
COPY --chmod=0755 deploy/compose_secrets.py /usr/local/bin/runbook-compose-secrets
COPY definitions ./definitions

USER runbook
CMD ["runbook-celery", "worker"]
