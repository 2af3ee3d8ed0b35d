#!/bin/sh
# Builds the release binary for this machine and writes, into OUT_DIR (default
# dist/), what install.sh downloads: buildd-<target-triple>.tar.gz (the binary at the
# archive's root) and buildd-<target-triple>.tar.gz.sha256 (sha256sum format).
#
#   scripts/release.sh [OUT_DIR]
#   BUILDD_RELEASE_BINARY=path/to/buildd scripts/release.sh OUT_DIR   # package a built binary
set -eu

cd "$(dirname "$0")/.."
out=${1:-dist}
triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "release.sh: cannot tell the target triple from rustc -vV" >&2; exit 1; }

if [ -n "${BUILDD_RELEASE_BINARY:-}" ]; then
	binary=$BUILDD_RELEASE_BINARY
else
	cargo build --release --locked
	binary=target/release/buildd
fi
[ -x "$binary" ] || { echo "release.sh: no binary at $binary" >&2; exit 1; }

mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/buildd"
asset="buildd-$triple.tar.gz"
tar -czf "$out/$asset" -C "$stage" buildd
(cd "$out" && sha256sum "$asset" >"$asset.sha256")

size=$(wc -c <"$binary" | tr -d ' ')
echo "$out/$asset ($("$binary" --version), binary $((size / 1024 / 1024)) MiB)"
