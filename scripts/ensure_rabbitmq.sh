#!/usr/bin/env bash
# Make RabbitMQ answer on 127.0.0.1:5672 (for tests/test_brokers.py): nothing to do if it
# already answers; else install rabbitmq-server with apt-get if missing, start it detached and
# wait (bounded) until it answers. Exit 1 if it does not answer in time.
set -euo pipefail

HOST="${RABBITMQ_HOST:-127.0.0.1}"
PORT="${RABBITMQ_PORT:-5672}"
WAIT_SECONDS="${RABBITMQ_WAIT_SECONDS:-90}"

answers() {
  # the AMQP port accepts connections (bash's /dev/tcp: no extra tool needed)
  timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/${PORT}" 2>/dev/null
}

if answers; then
  echo "rabbitmq answers on ${HOST}:${PORT}"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

# apt may have started it as a service already; start it ourselves only if it is not up
if ! answers && ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  rabbitmq-server -detached
fi

deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
  if ((SECONDS >= deadline)); then
    echo "rabbitmq did not answer on ${HOST}:${PORT} within ${WAIT_SECONDS}s" >&2
    exit 1
  fi
  sleep 0.5
done
# the port opens before the broker is ready to serve; the ping says when it is
until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "rabbitmq listens on ${PORT} but does not answer pings within ${WAIT_SECONDS}s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "rabbitmq answers on ${HOST}:${PORT}"
