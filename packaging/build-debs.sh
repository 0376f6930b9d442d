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

# Depends: must name the glibc the binary really needs: the highest GLIBC_x.y
# symbol version it links. dpkg-shlibdeps gets that right natively; for a cross
# build it falls back to the cross libc package's version (and qualifies it as
# libc6:arm64), so the control file is corrected here when it differs.
check_depends() {
  local deb=$1 arch=$2 tmp need have objdump=objdump
  [[ "$arch" == arm64 ]] && objdump=aarch64-linux-gnu-objdump
  tmp=$(mktemp -d)
  dpkg-deb -R "$deb" "$tmp/pkg"
  need=$("$objdump" -T "$tmp/pkg/usr/bin/ferry" | grep -o 'GLIBC_2\.[0-9]*' |
    sed 's/GLIBC_//' | sort -t. -k2 -n -u | tail -n 1)
  have=$(dpkg-deb -f "$deb" Depends)
  if [[ "$have" != "adduser, libc6 (>= $need)" ]]; then
    echo "Depends: $have -> adduser, libc6 (>= $need) (the highest GLIBC symbol version in the binary)"
    sed -i "s/^Depends: .*/Depends: adduser, libc6 (>= $need)/" "$tmp/pkg/DEBIAN/control"
    dpkg-deb --root-owner-group -Zxz -b "$tmp/pkg" "$deb" >/dev/null
  fi
  rm -rf "$tmp"
}

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
  check_depends "$deb" "$arch"
  size=$(stat -c %s "$deb")
  echo "size: $size bytes ($(dpkg-deb -f "$deb" Installed-Size) KiB installed); Depends: $(dpkg-deb -f "$deb" Depends)"
  if ((size > max_bytes)); then
    echo "build-debs: $deb is larger than 5 MB" >&2
    exit 1
  fi
  # Errors fail the build; warnings (no man page, ...) are printed.
  lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb"
done
