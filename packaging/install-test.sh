#!/usr/bin/env bash
# Installs the amd64 .deb on this machine and checks what the package
# promises, then removes and purges it (also on failure):
#   - files, owners and modes; /etc/ferry/ferry.toml a conffile;
#   - `ferry validate /etc/ferry/ferry.toml` passes, as root and as ferry;
#   - the daemon runs as the ferry user against /var/lib/ferry and stores a
#     reading (no systemd here: it is started the way the unit starts it);
#   - `dpkg -r` keeps the config and the data, `dpkg -P` deletes both; the
#     ferry user stays (Debian does not remove system users).
#
#   packaging/install-test.sh target/debian/ferry_0.1.0-1_amd64.deb
#
# Needs root, dpkg, mosquitto-clients and curl. Refuses to run if a ferry
# package is already installed (it would be purged, with its data). The
# daemon listens on free ports (a copy of the config), not on 1883/9108.
set -euo pipefail
deb=${1:?usage: install-test.sh FERRY.deb}
[[ "$(id -u)" -eq 0 ]] || { echo "install-test: needs root" >&2; exit 2; }
if dpkg-query -W -f '${Status}' ferry 2>/dev/null | grep -q installed; then
  echo "install-test: a ferry package is installed here already; not touching it" >&2
  exit 2
fi

fail() { echo "install-test: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
tmp=$(mktemp -d)
daemon=
cleanup() {
  [[ -n "$daemon" ]] && kill "$daemon" 2>/dev/null || true
  dpkg -P ferry >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# No service is started by the package here: without a running systemd
# (no /run/systemd/system) its postinst only enables the unit.
export DEBIAN_FRONTEND=noninteractive
dpkg -i "$deb"
ok "dpkg -i"

# stat -c '%U:%G %a' for each path.
expect() {
  local path=$1 want=$2 got
  got=$(stat -c '%U:%G %a' "$path") || fail "$path is missing"
  [[ "$got" == "$want" ]] || fail "$path is $got, expected $want"
  ok "$path $got"
}
getent passwd ferry >/dev/null || fail "no ferry user"
[[ "$(getent passwd ferry | cut -d: -f6,7)" == /var/lib/ferry:/usr/sbin/nologin ]] \
  || fail "ferry user: $(getent passwd ferry)"
expect /usr/bin/ferry "root:root 755"
expect /etc/ferry "root:ferry 750"
expect /etc/ferry/ferry.toml "root:ferry 640"
expect /var/lib/ferry "ferry:ferry 750"
expect /usr/lib/systemd/system/ferry.service "root:root 644"
expect /usr/share/ferry/grafana-dashboard.json "root:root 644"
expect /usr/share/doc/ferry/copyright "root:root 644"
dpkg-query -W -f '${Conffiles}\n' ferry | grep -q '^ /etc/ferry/ferry.toml [0-9a-f]\{32\}' \
  || fail "/etc/ferry/ferry.toml is not a conffile"
ok "conffile /etc/ferry/ferry.toml"
[[ -L /etc/systemd/system/multi-user.target.wants/ferry.service ]] \
  || fail "ferry.service is not enabled"
ok "ferry.service enabled"

ferry validate /etc/ferry/ferry.toml
runuser -u ferry -- ferry validate /etc/ferry/ferry.toml
ok "ferry validate (root and ferry)"
grep -q '^# \[uplinks.iot_core\]' /etc/ferry/ferry.toml || fail "the uplink is not disabled"

# Run it as the unit does (User=ferry, the installed config, /var/lib/ferry),
# on free ports.
read -r broker metrics < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
sed -e "s/127.0.0.1:1883/127.0.0.1:$broker/" -e "s/127.0.0.1:9108/127.0.0.1:$metrics/" \
  /etc/ferry/ferry.toml > "$tmp/ferry.toml"
chmod 755 "$tmp"; chmod 644 "$tmp/ferry.toml"
# UMask=0077 as in the unit.
# setpriv execs (runuser would fork and stay root): $daemon is ferry itself.
(umask 0077; exec setpriv --reuid=ferry --regid=ferry --init-groups -- \
  ferry run --config "$tmp/ferry.toml") 2> "$tmp/log" &
daemon=$!
for _ in $(seq 300); do
  grep -qs "ferry running" "$tmp/log" && break
  kill -0 "$daemon" 2>/dev/null || { cat "$tmp/log"; fail "the daemon exited"; }
  sleep 0.1
done
grep -q "ferry running" "$tmp/log" || { cat "$tmp/log"; fail "the daemon did not start"; }
[[ "$(ps -o user= -p "$daemon")" == ferry ]] || fail "the daemon does not run as ferry"
mosquitto_pub -h 127.0.0.1 -p "$broker" -q 1 -t sensors/7/telemetry -m '{"temperature": 21.5}'
for _ in $(seq 100); do
  curl -s "127.0.0.1:$metrics/metrics" | grep -q '^ferry_ingest_records_stored_total 1$' && break
  sleep 0.1
done
curl -s "127.0.0.1:$metrics/metrics" | grep -q '^ferry_ingest_records_stored_total 1$' \
  || { cat "$tmp/log"; fail "the reading was not stored"; }
curl -sf "127.0.0.1:$metrics/readyz" | grep -q "^ready: .* records stored" || fail "/readyz"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon did not exit 0 on SIGTERM"
daemon=
expect /var/lib/ferry/ferry.redb "ferry:ferry 600"
ok "ran as ferry, stored a reading in /var/lib/ferry, stopped on SIGTERM"

dpkg -r ferry
[[ ! -e /usr/bin/ferry ]] || fail "dpkg -r left /usr/bin/ferry"
[[ -f /etc/ferry/ferry.toml ]] || fail "dpkg -r deleted the config"
[[ -f /var/lib/ferry/ferry.redb ]] || fail "dpkg -r deleted the data"
ok "dpkg -r: binary gone, config and data kept"

dpkg -P ferry
[[ ! -e /etc/ferry ]] || fail "dpkg -P left /etc/ferry"
[[ ! -e /var/lib/ferry ]] || fail "dpkg -P left /var/lib/ferry"
[[ ! -e /etc/systemd/system/multi-user.target.wants/ferry.service ]] \
  || fail "dpkg -P left the unit enabled"
getent passwd ferry >/dev/null || fail "the ferry user was removed"
ok "dpkg -P: config, data and enablement gone; the ferry user stays"
echo "install-test: all checks passed"
