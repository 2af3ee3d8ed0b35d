#!/bin/sh
# Installs buildd: curl -fsSL https://…/install.sh | sh
#
#   BUILDD_VERSION       the release to install, e.g. 0.2.0 (default: latest)
#   BUILDD_INSTALL_DIR   where the binary goes (default: /usr/local/bin as root,
#                        else ~/.local/bin)
#   BUILDD_DOWNLOAD_URL  the base URL of the release assets (default: the GitHub
#                        release of BUILDD_VERSION)
#
# It downloads buildd-<target-triple>.tar.gz and its .sha256, checks the checksum,
# and only then replaces the installed binary, in one rename: a failed download or a
# wrong checksum leaves what was installed as it was. POSIX sh; Linux and macOS.
set -eu

REPO="buildd-dev/buildd"

say() { printf 'install.sh: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

target_triple() {
	os=$(uname -s)
	arch=$(uname -m)
	case "$arch" in
		x86_64 | amd64) arch=x86_64 ;;
		aarch64 | arm64) arch=aarch64 ;;
		*) fail "unsupported CPU architecture: $arch (buildd is built for x86_64 and arm64)" ;;
	esac
	case "$os" in
		Linux) echo "$arch-unknown-linux-gnu" ;;
		Darwin) echo "$arch-apple-darwin" ;;
		*) fail "unsupported operating system: $os (buildd is built for Linux and macOS)" ;;
	esac
}

download() { # URL FILE
	if command -v curl >/dev/null 2>&1; then
		curl -fsSL --retry 3 -o "$2" "$1"
	elif command -v wget >/dev/null 2>&1; then
		wget -q -O "$2" "$1"
	else
		fail "neither curl nor wget is installed"
	fi
}

sha256_of() { # FILE
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	else
		fail "neither sha256sum nor shasum is installed: cannot check the download"
	fi
}

main() {
	triple=$(target_triple)
	version=${BUILDD_VERSION:-latest}
	if [ -n "${BUILDD_DOWNLOAD_URL:-}" ]; then
		base=${BUILDD_DOWNLOAD_URL%/}
	elif [ "$version" = latest ]; then
		base="https://github.com/$REPO/releases/latest/download"
	else
		base="https://github.com/$REPO/releases/download/v${version#v}"
	fi
	if [ -n "${BUILDD_INSTALL_DIR:-}" ]; then
		dir=$BUILDD_INSTALL_DIR
	elif [ "$(id -u)" -eq 0 ]; then
		dir=/usr/local/bin
	else
		dir="$HOME/.local/bin"
	fi

	asset="buildd-$triple.tar.gz"
	tmp=$(mktemp -d 2>/dev/null || mktemp -d -t buildd)
	trap 'rm -rf "$tmp"' EXIT
	trap 'exit 1' INT TERM

	say "downloading $base/$asset"
	download "$base/$asset" "$tmp/$asset" || fail "download failed: $base/$asset (nothing was installed)"
	download "$base/$asset.sha256" "$tmp/$asset.sha256" || fail "download failed: $base/$asset.sha256 (nothing was installed)"

	expected=$(cut -d' ' -f1 <"$tmp/$asset.sha256")
	actual=$(sha256_of "$tmp/$asset")
	if [ -z "$expected" ] || [ "$expected" != "$actual" ]; then
		fail "checksum mismatch for $asset: expected ${expected:-nothing}, got $actual (nothing was installed)"
	fi

	mkdir "$tmp/unpacked"
	tar -xzf "$tmp/$asset" -C "$tmp/unpacked" || fail "cannot unpack $asset (nothing was installed)"
	[ -f "$tmp/unpacked/buildd" ] || fail "$asset holds no buildd binary at its root (nothing was installed)"
	chmod 755 "$tmp/unpacked/buildd"
	installed=$("$tmp/unpacked/buildd" --version 2>/dev/null) || fail "the downloaded buildd does not run on this machine (nothing was installed)"

	mkdir -p "$dir" || fail "cannot create $dir"
	# Copy beside the target, then rename over it: the old binary stays whole until
	# the new one is complete, and a running buildd keeps its file.
	staged="$dir/.buildd.new.$$"
	cp "$tmp/unpacked/buildd" "$staged" || { rm -f "$staged"; fail "cannot write to $dir (try as root, or set BUILDD_INSTALL_DIR)"; }
	mv -f "$staged" "$dir/buildd" || { rm -f "$staged"; fail "cannot replace $dir/buildd"; }

	say "installed $installed to $dir/buildd"
	case ":$PATH:" in
		*":$dir:"*) ;;
		*) say "$dir is not on your PATH; add it, or run $dir/buildd" ;;
	esac
	printf '%s\n' "$installed"
}

main "$@"
