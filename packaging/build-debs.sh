#!/usr/bin/env bash
# Builds the ferry .deb for amd64 and arm64 (Raspberry Pi OS 64-bit) with
# cargo-deb, then checks each: lintian without errors, at most 5 MB.
#
#   packaging/build-debs.sh [amd64] [arm64]     (default: both)
#
# Output: $FERRY_DEB_DIR (default target/debian)/ferry_VERSION-1_ARCH.deb.
# Needs: cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev, lintian;
# for arm64 also `rustup target add aarch64-unknown-linux-gnu` and Debian's
# gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (the linker, and the arm64
# libc that dpkg-shlibdeps reads to compute Depends:). Only `.ci/run` installs
# these; this script installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${FERRY_DEB_DIR:-target/debian}
max_bytes=$((5 * 1024 * 1024))
arches=("$@")
((${#arches[@]})) || arches=(amd64 arm64)

for arch in "${arches[@]}"; do
  case "$arch" in
    amd64) target=() ;;
    arm64)
      target=(--target aarch64-unknown-linux-gnu)
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      ;;
    *) echo "build-debs: unknown architecture $arch (amd64, arm64)" >&2; exit 2 ;;
  esac
  echo "--- ferry .deb for $arch"
  start=$SECONDS
  deb=$(cargo deb --locked -p ferry-gateway "${target[@]}" -o "$out" | tail -n 1)
  echo "built $deb in $((SECONDS - start)) s"
  size=$(stat -c %s "$deb")
  echo "size: $size bytes ($(dpkg-deb -f "$deb" Installed-Size) KiB installed); Depends: $(dpkg-deb -f "$deb" Depends)"
  if ((size > max_bytes)); then
    echo "build-debs: $deb is larger than 5 MB" >&2
    exit 1
  fi
  # Errors fail the build; warnings (no man page, ...) are printed.
  lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb"
done
