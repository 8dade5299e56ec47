#!/bin/sh
# A throw-away reference Dovecot on loopback, to prove the imaptest runner and for the benchmark.
#
#   scripts/dovecot-ref.sh start [PORT]   install dovecot-imapd if missing, start Dovecot on
#                                         127.0.0.1:PORT (a free port if none) and print PORT
#   scripts/dovecot-ref.sh stop PORT      stop it and remove its folder
#
# Runs as root with everything in /tmp/dovecot-ref-PORT (config, maildirs, logs); the
# system-wide /etc/dovecot is never read.  Accounts (passwd-file, plaintext passwords):
# user1@example.test and user2@example.test, both with the password "pass".
set -eu

usage() {
    echo "usage: $0 start [PORT] | stop PORT" >&2
    exit 2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    port=${1:-$(free_port)}
    if ! command -v dovecot >/dev/null 2>&1; then
        apt-get install -y dovecot-imapd >/dev/null
    fi
    dir=/tmp/dovecot-ref-$port
    rm -rf "$dir"
    mkdir -p "$dir/run" "$dir/mail"
    # Mail processes may not run as root: the mail belongs to nobody.
    uid=$(id -u nobody)
    gid=$(id -g nobody)
    chown "$uid:$gid" "$dir/mail"
    : >"$dir/passwd"
    for user in user1 user2; do
        echo "$user@example.test:{PLAIN}pass:$uid:$gid::$dir/mail/$user" >>"$dir/passwd"
    done
    cat >"$dir/dovecot.conf" <<EOF
base_dir = $dir/run
state_dir = $dir/run
log_path = $dir/dovecot.log
instance_name = dovecot-ref-$port
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = $uid
last_valid_uid = $uid
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%u $dir/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0666
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
    dovecot -c "$dir/dovecot.conf"
    # Ready when the port answers.
    for _ in $(seq 50); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
            echo "$port"
            return
        fi
        sleep 0.1
    done
    echo "dovecot did not start; see $dir/dovecot.log" >&2
    exit 1
}

stop() {
    dir=/tmp/dovecot-ref-${1:?}
    [ -f "$dir/dovecot.conf" ] || { echo "no reference Dovecot on port $1" >&2; exit 1; }
    dovecot -c "$dir/dovecot.conf" stop || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) usage ;;
esac
