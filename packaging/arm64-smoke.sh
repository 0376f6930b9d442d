#!/usr/bin/env bash
# Smoke test of the arm64 package under qemu-user (binfmt is not needed):
# the binary from the .deb starts, validates the packaged config, runs with
# its embedded broker on a free port, stores a published reading (seen in
# its metrics), and stops on SIGTERM.
#
#   packaging/arm64-smoke.sh target/debian/ferry_0.1.0-1_arm64.deb
#
# Needs qemu-user-static, the arm64 libc (libc6-dev-arm64-cross, in
# /usr/aarch64-linux-gnu), mosquitto-clients, curl, python3.
set -euo pipefail
deb=${1:?usage: arm64-smoke.sh FERRY_arm64.deb}
[[ "$(dpkg-deb -f "$deb" Architecture)" == arm64 ]] || { echo "not an arm64 package: $deb" >&2; exit 2; }
tmp=$(mktemp -d)
daemon=
trap '[[ -n "$daemon" ]] && kill "$daemon" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "arm64-smoke: FAIL: $*" >&2; [[ -f "$tmp/log" ]] && cat "$tmp/log" >&2; exit 1; }

dpkg-deb -x "$deb" "$tmp/root"
ferry=(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$tmp/root/usr/bin/ferry")
file "$tmp/root/usr/bin/ferry" | grep -q "ARM aarch64" || fail "not an aarch64 binary"
"${ferry[@]}" --version
"${ferry[@]}" validate "$tmp/root/etc/ferry/ferry.toml"

read -r broker metrics < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
sed -e "s#/var/lib/ferry#$tmp/data#" -e "s/127.0.0.1:1883/127.0.0.1:$broker/" \
  -e "s/127.0.0.1:9108/127.0.0.1:$metrics/" "$tmp/root/etc/ferry/ferry.toml" > "$tmp/ferry.toml"
start=$(date +%s.%N)
"${ferry[@]}" run --config "$tmp/ferry.toml" 2> "$tmp/log" &
daemon=$!
for _ in $(seq 600); do
  grep -qs "ferry running" "$tmp/log" && break
  kill -0 "$daemon" 2>/dev/null || fail "the daemon exited"
  sleep 0.1
done
grep -q "ferry running" "$tmp/log" || fail "the daemon did not start within 60 s"
echo "started under qemu in $(python3 -c "print(round($(date +%s.%N) - $start, 2))") s"
mosquitto_pub -h 127.0.0.1 -p "$broker" -q 1 -t sensors/7/telemetry -m '{"temperature": 21.5}'
for _ in $(seq 300); do
  curl -s "127.0.0.1:$metrics/metrics" | grep -q '^ferry_ingest_records_stored_total 1$' && break
  sleep 0.1
done
curl -s "127.0.0.1:$metrics/metrics" | grep -q '^ferry_ingest_records_stored_total 1$' \
  || fail "the reading was not stored"
curl -s "127.0.0.1:$metrics/metrics" | grep 'ferry_build_info'
kill -TERM "$daemon"
wait "$daemon" || fail "no clean exit on SIGTERM"
daemon=
[[ -s "$tmp/data/ferry.redb" ]] || fail "no store file"
echo "arm64-smoke: the arm64 ferry started, validated, stored a reading and stopped"
