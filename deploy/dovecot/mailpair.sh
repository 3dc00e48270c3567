#!/usr/bin/env bash
# mailpair.sh - a "primary" and a "standby" Dovecot 2.3 on loopback, for the mailrepl demo and
# for trying the gateways by hand. Both run deploy/dovecot/dovecot.conf.in, the configuration
# the test suite uses too.
#
# Usage (as root):
#   mailpair.sh setup  BASE            write BASE/{primary,standby}/ (config, users, directories)
#   mailpair.sh start  BASE            start both instances (waits until IMAP answers)
#   mailpair.sh stop   BASE            stop both instances
#   mailpair.sh status BASE            running or stopped, with ports
#   mailpair.sh wipe   BASE primary|standby [USER...]   delete users' mail (every user if none given)
#   mailpair.sh conf   BASE primary|standby             print the config path, for doveadm -c
#
# Environment for setup (defaults in brackets):
#   PRIMARY_IMAP_PORT [10143]  PRIMARY_LMTP_PORT [10024]
#   STANDBY_IMAP_PORT [11143]  STANDBY_LMTP_PORT [11024]
#   USERS ["alice bob carol dave"]   all with password "secret"
#   MAIL_FORMAT [mdbox]   mdbox | sdbox | maildir
#   MAIL_FSYNC [optimized]   optimized | always | never
#   STANDBY_MAX_MAIL_SIZE [unset]   e.g. 1M: the standby refuses larger messages (quota plugin)
#
# The master user "repl" (password "secret") may act for every user: SASL PLAIN with
# authzid=<user>, or LOGIN "<user>*repl". Mail is delivered by LMTP; RCPT TO:<alice+Lists/dev@localhost>
# files into folder Lists/dev. Each instance's log is BASE/<instance>/log/dovecot.log.
#
# Only processes started from BASE's configs are signalled; the system Dovecot (if any) and
# /etc/dovecot are never touched.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATE=${TEMPLATE:-$here/dovecot.conf.in}
INSTANCES=(primary standby)
MASTER_USER=repl
PASSWORD=secret
MAIL_USER=nobody
MAIL_GROUP=nogroup

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "mailpair: $*" >&2; exit 1; }

cmd=${1:-}
[[ -n "$cmd" && -n "${2:-}" ]] || usage
BASE=$(realpath -m "$2")
shift 2

find_bin() { command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || die "$1 not found (apt-get install dovecot-imapd dovecot-lmtpd)"; }
conf_of() { echo "$BASE/$1/dovecot.conf"; }
check_instance() { [[ " ${INSTANCES[*]} " == *" $1 "* ]] || die "unknown instance '$1' (primary or standby)"; }
port_of() { sed -n "s/^# mailpair: $2=//p" "$(conf_of "$1")"; }

# pid of the instance's master, only if that process really runs this instance's config
master_pid() {
  local pid
  pid=$(cat "$BASE/$1/run/master.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$(conf_of "$1")" || return 1
  echo "$pid"
}

sed_escape() { printf '%s' "$1" | sed -e 's/[\/&|\\]/\\&/g'; }

render() { # instance imap_port lmtp_port max_mail_size
  local n=$1 d="$BASE/$1" location plugins="" size=${4:-}
  case "${MAIL_FORMAT:-mdbox}" in
    mdbox)   location="mdbox:~/mdbox" ;;
    sdbox)   location="sdbox:~/sdbox" ;;
    maildir) location="maildir:~/Maildir:LAYOUT=fs" ;;
    *) die "MAIL_FORMAT must be mdbox, sdbox or maildir" ;;
  esac
  case "${MAIL_FSYNC:-optimized}" in optimized|always|never) ;; *) die "MAIL_FSYNC must be optimized, always or never" ;; esac
  [[ -n "$size" ]] && plugins=quota
  [[ "$2" =~ ^[0-9]+$ && "$3" =~ ^[0-9]+$ ]] || die "ports must be numbers"
  local -A values=(
    [NAME]=$n [BASE]=$d [LISTEN]=127.0.0.1 [IMAP_PORT]=$2 [LMTP_PORT]=$3 [MAIL_LOCATION]=$location
    [MAIL_FSYNC]=${MAIL_FSYNC:-optimized} [MAIL_USER]=$MAIL_USER [MAIL_GROUP]=$MAIL_GROUP
    [MAIL_PLUGINS]=$plugins [QUOTA_MAX_MAIL_SIZE]=${size:-0} [IMAP_PROCESS_LIMIT]=${IMAP_PROCESS_LIMIT:-1024} [IMAP_MIN_AVAIL]=8
  )
  local script=() key
  for key in "${!values[@]}"; do script+=(-e "s|@$key@|$(sed_escape "${values[$key]}")|g"); done
  local text
  text=$(sed "${script[@]}" "$TEMPLATE")
  if grep -qE '@[A-Z][A-Z0-9_]*@' <<<"$text"; then
    die "template placeholders left unrendered: $(grep -oE '@[A-Z][A-Z0-9_]*@' <<<"$text" | sort -u | tr '\n' ' ')"
  fi
  {
    printf '# Rendered by mailpair.sh from %s - edit the template, not this file.\n' "$TEMPLATE"
    printf '# mailpair: imap=%s\n# mailpair: lmtp=%s\n' "$2" "$3"
    printf '%s\n' "$text"
  } > "$d/dovecot.conf"
}

setup_one() { # instance imap_port lmtp_port max_mail_size
  local n=$1 d="$BASE/$1" u
  mkdir -p "$d"/{run,state,log,mail}
  # the unprivileged mail user must be able to reach its mail root
  chmod 0755 "$BASE" "$d"
  chown "$MAIL_USER:$MAIL_GROUP" "$d/mail"
  : > "$d/users.passwd"
  for u in ${USERS:-alice bob carol dave}; do
    [[ "$u" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "user names must be lower-case [a-z0-9._-]: '$u'"
    printf '%s:{PLAIN}%s::::::\n' "$u" "$PASSWORD" >> "$d/users.passwd"
  done
  printf '%s:{PLAIN}%s::::::\n' "$MASTER_USER" "$PASSWORD" > "$d/masters.passwd"
  # readable by Dovecot's auth process (group dovecot), not by everyone
  chown root:dovecot "$d/users.passwd" "$d/masters.passwd"
  chmod 0640 "$d/users.passwd" "$d/masters.passwd"
  render "$@"
  echo "$n: $d/dovecot.conf (IMAP 127.0.0.1:$2, LMTP 127.0.0.1:$3${4:+, max message size $4})"
}

wait_greeting() { # port prefix
  local line
  for _ in $(seq 1 100); do
    if exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
      IFS= read -r -t 2 line <&3 || line=""
      exec 3<&- 3>&-
      [[ "$line" == "$2"* ]] && return 0
    fi
    sleep 0.1
  done
  return 1
}

start_one() {
  local n=$1 pid
  [[ -f "$(conf_of "$n")" ]] || die "$n is not set up; run: $0 setup $BASE"
  if pid=$(master_pid "$n"); then echo "$n: already running (pid $pid)"; return; fi
  rm -f "$BASE/$n/run/master.pid"
  "$(find_bin dovecot)" -c "$(conf_of "$n")" </dev/null || die "$n failed to start; see $BASE/$n/log/dovecot.log"
  if ! wait_greeting "$(port_of "$n" imap)" "* OK" || ! wait_greeting "$(port_of "$n" lmtp)" "220"; then
    die "$n does not answer; see $BASE/$n/log/dovecot.log"
  fi
  echo "$n: running (pid $(master_pid "$n"), IMAP $(port_of "$n" imap), LMTP $(port_of "$n" lmtp))"
}

# a process that exists and is not a zombie (init may take a while to reap the daemon)
running() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
# any non-zombie process left in the group (the master called setsid: its pid is the group)
group_alive() { pgrep -g "$1" -r D,R,S,T,t >/dev/null 2>&1; }

stop_one() {
  local n=$1 pid
  if ! pid=$(master_pid "$n"); then echo "$n: not running"; return; fi
  kill -TERM "$pid"
  for _ in $(seq 1 300); do running "$pid" || break; sleep 0.1; done
  # the master does not wait for IMAP sessions; end them too (they say "Server shutting down")
  if group_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do group_alive "$pid" || break; sleep 0.1; done
  fi
  if group_alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  echo "$n: stopped (was pid $pid)"
}

case "$cmd" in
  setup)
    [[ $EUID -eq 0 ]] || die "run as root (Dovecot's master drops privileges itself)"
    [[ -f "$TEMPLATE" ]] || die "template not found: $TEMPLATE"
    find_bin dovecot >/dev/null
    setup_one primary "${PRIMARY_IMAP_PORT:-10143}" "${PRIMARY_LMTP_PORT:-10024}" ""
    setup_one standby "${STANDBY_IMAP_PORT:-11143}" "${STANDBY_LMTP_PORT:-11024}" "${STANDBY_MAX_MAIL_SIZE:-}"
    ;;
  start)  for n in "${INSTANCES[@]}"; do start_one "$n"; done ;;
  stop)   for n in "${INSTANCES[@]}"; do stop_one "$n"; done ;;
  status)
    for n in "${INSTANCES[@]}"; do
      if [[ ! -f "$(conf_of "$n")" ]]; then echo "$n: not set up"
      elif pid=$(master_pid "$n"); then echo "$n: running (pid $pid, IMAP $(port_of "$n" imap), LMTP $(port_of "$n" lmtp))"
      else echo "$n: stopped"; fi
    done ;;
  wipe)
    n=${1:-}; [[ -n "$n" ]] || usage
    check_instance "$n"; shift
    users=("$@")
    if [[ ${#users[@]} -eq 0 ]]; then  # every user that has mail
      for d in "$BASE/$n/mail"/*/; do [[ -d "$d" ]] && users+=("$(basename "$d")"); done
    fi
    for u in "${users[@]}"; do
      [[ "$u" =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "bad user name '$u'"
      # disconnect the user's sessions first, so no process writes into the removed files
      if master_pid "$n" >/dev/null; then "$(find_bin doveadm)" -c "$(conf_of "$n")" kick "$u" >/dev/null 2>&1 || true; fi
      rm -rf -- "${BASE:?}/$n/mail/$u"
      echo "$n: wiped $u"
    done ;;
  conf) n=${1:-}; [[ -n "$n" ]] || usage; check_instance "$n"; conf_of "$n" ;;
  *) usage ;;
esac
