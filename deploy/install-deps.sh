#!/usr/bin/env bash
# Prepares a Debian 12 machine (as root, non-interactively) for mailrepl, its demo and its test
# suite. Idempotent: a second run only re-checks. Used by deploy/demo.sh and .ci/run.
#
#   - Dovecot (dovecot-imapd, dovecot-lmtpd) installed, its system instance never started: the
#     tests run private instances from deploy/dovecot/dovecot.conf.in;
#   - nginx (nginx-light + libnginx-mod-mail) for the mail proxy in front of the servers, its
#     system instance never started: the tests run private instances from deploy/nginx/;
#   - Cyrus IMAP 3.6 beside Dovecot: cyrus-common (master, lmtpd, tools) and sasl2-bin installed,
#     the system instance never started; the imapd binary extracted from the cyrus-imapd package
#     into /opt/mailrepl/cyrus without installing it (cyrus-imapd conflicts with dovecot-imapd and
#     would remove it); the tests run private instances from deploy/cyrus/;
#   - iproute2 and nftables for the two-site test rig (network namespaces, veth, tbf, loss);
#   - Debian's chromium and chromium-driver (headless) for the console's browser tests;
#   - PostgreSQL answering on 127.0.0.1:5432 with trust login for the tests;
#   - the project installed with its test and postgres extras;
#   - when the Python on PATH cannot take pip installs (missing, or the distribution's own),
#     a virtualenv in .venv: callers put .venv/bin first on PATH when it exists.
#
# Setup output goes to a log file that is printed only when a step fails.
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
PG_HOST=127.0.0.1 PG_PORT=5432

log=$(mktemp -t mailrepl-install.XXXXXX)
created_policy=""
cleanup() {
  [[ -z "$created_policy" ]] || rm -f /usr/sbin/policy-rc.d
  rm -f "$log"
}
trap cleanup EXIT

say() { printf 'install: %s\n' "$*"; }
fail() {
  printf 'install: FAILED: %s\n' "$*" >&2
  if [[ -s "$log" ]]; then printf -- '--- setup log (last 150 lines) ---\n' >&2; tail -n 150 "$log" >&2; fi
  exit 1
}
# run a setup command with its output in the log
quiet() { "$@" >>"$log" 2>&1 || fail "$*"; }

[[ $EUID -eq 0 ]] || fail "must run as root"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_updated=""
apt_install() {
  local missing=() p
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  say "installing ${missing[*]}"
  # keep maintainer scripts from starting system services (Dovecot, PostgreSQL's own start
  # is done below, explicitly)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  if [[ -z "$apt_updated" ]]; then quiet apt-get update; apt_updated=1; fi
  quiet apt-get install -y --no-install-recommends "${missing[@]}"
}

# --- Dovecot --------------------------------------------------------------------------------
apt_install dovecot-imapd dovecot-lmtpd openssl  # openssl: S/MIME signatures checked after split and reassembly
# the system instance is not wanted (it would only hold ports 143/993 and memory)
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  if systemctl is-active --quiet dovecot 2>/dev/null || systemctl is-enabled --quiet dovecot 2>/dev/null; then
    say "stopping and disabling the system Dovecot"
    systemctl disable --now dovecot >>"$log" 2>&1 || true
  fi
elif [[ -s /run/dovecot/master.pid ]] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
  say "stopping the system Dovecot"
  doveadm -c /etc/dovecot/dovecot.conf stop >>"$log" 2>&1 || true
fi
say "$(dovecot --version | cut -d' ' -f1) Dovecot"

# --- Cyrus IMAP (beside Dovecot) ------------------------------------------------------------
CYRUS_ROOT=/opt/mailrepl/cyrus
apt_install cyrus-common sasl2-bin
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  if systemctl is-active --quiet cyrus-imapd 2>/dev/null || systemctl is-enabled --quiet cyrus-imapd 2>/dev/null; then
    say "stopping and disabling the system Cyrus"
    systemctl disable --now cyrus-imapd >>"$log" 2>&1 || true
  fi
fi
if [[ ! -x /usr/lib/cyrus/bin/imapd && ! -x $CYRUS_ROOT/usr/lib/cyrus/bin/imapd ]]; then
  if [[ -z "$apt_updated" ]]; then quiet apt-get update; apt_updated=1; fi
  say "extracting imapd from the cyrus-imapd package into $CYRUS_ROOT (not installed: it would remove Dovecot)"
  pkgdir=$(mktemp -d -t mailrepl-cyrus.XXXXXX)
  # the version must match cyrus-common's (same libraries, same database formats)
  cyrus_version=$(dpkg-query -W -f='${Version}' cyrus-common)
  (cd "$pkgdir" && apt-get download "cyrus-imapd=$cyrus_version") >>"$log" 2>&1 \
    || fail "apt-get download cyrus-imapd=$cyrus_version"
  mkdir -p "$CYRUS_ROOT"
  quiet dpkg -x "$pkgdir"/cyrus-imapd_*.deb "$CYRUS_ROOT"
  rm -rf "$pkgdir"
fi
imapd=/usr/lib/cyrus/bin/imapd
[[ -x $imapd ]] || imapd=$CYRUS_ROOT/usr/lib/cyrus/bin/imapd
say "Cyrus $(dpkg-query -W -f='${Version}' cyrus-common) with $imapd"
installed dovecot-imapd || fail "dovecot-imapd is gone (was cyrus-imapd installed?)"

# --- network namespaces (the two-site rig of the tests: veth link, nft loss, tbf rate) -----
apt_install iproute2 nftables
say "$(nft --version) and $(ip -V)"

# --- nginx (mail proxy) --------------------------------------------------------------------
apt_install nginx-light libnginx-mod-mail
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
  if systemctl is-active --quiet nginx 2>/dev/null || systemctl is-enabled --quiet nginx 2>/dev/null; then
    say "stopping and disabling the system nginx"
    systemctl disable --now nginx >>"$log" 2>&1 || true
  fi
fi
say "$(nginx -v 2>&1 | cut -d' ' -f3) with $(ls /usr/lib/nginx/modules/ngx_mail_module.so)"

# --- headless Chromium (the console's browser tests) ----------------------------------------
apt_install chromium chromium-driver
say "$(chromium --version 2>/dev/null | head -n 1) with $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"

# --- PostgreSQL -----------------------------------------------------------------------------
pg_answers() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  else
    (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
  fi
}
if ! pg_answers; then
  if [[ -z "$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d 2>/dev/null)" ]]; then
    apt_install postgresql
  fi
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
  say "starting PostgreSQL $version"
  quiet pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_answers && break; sleep 1; done
  pg_answers || fail "PostgreSQL does not answer on $PG_HOST:$PG_PORT"
fi
# the fixtures log in without a password (as the OS user or as postgres); Debian's default
# pg_hba.conf asks for one on TCP, so a freshly installed cluster gets a loopback trust rule
if command -v psql >/dev/null 2>&1 \
   && ! psql -w -h "$PG_HOST" -p "$PG_PORT" -U "$(id -un)" -d postgres -Atc 'select 1' >/dev/null 2>&1 \
   && ! psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  hba=$(find /etc/postgresql -path '*/main/pg_hba.conf' 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$hba" ]] || fail "no passwordless PostgreSQL login on $PG_HOST:$PG_PORT and no local cluster to configure"
  say "allowing trust login of postgres on loopback in $hba"
  sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  quiet pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$(dirname "$hba")")")" main reload
  sleep 1
  psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>>"$log" \
    || fail "PostgreSQL still refuses a passwordless login"
fi
say "PostgreSQL answers on $PG_HOST:$PG_PORT"

# --- Python ---------------------------------------------------------------------------------
# The README's command starts with "python": use the one on PATH unless it is missing or the
# distribution's (which refuses pip installs, PEP 668); then a virtualenv in .venv provides it.
externally_managed() {
  python -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
if ! command -v python >/dev/null 2>&1 || externally_managed; then
  if [[ ! -x .venv/bin/python ]]; then
    apt_install python3 python3-venv
    say "creating .venv"
    quiet python3 -m venv .venv
  fi
  export PATH="$PWD/.venv/bin:$PATH"
fi
say "installing the project into $(python -c 'import sys; print(sys.prefix)') ($(python --version))"
quiet python -m pip install --disable-pip-version-check -q -e '.[test,postgres]'
say "ok"
