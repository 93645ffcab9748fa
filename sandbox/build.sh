#!/usr/bin/env bash
# Build the sandbox image without an image registry: a Debian root file system made from Debian's
# packages by mmdebstrap (python3 with `python` on the PATH, pytest, hypothesis, git and the usual
# command-line tools), kept as a folder (the root bubblewrap runs in) and imported into Docker as
# the image, so both backends run code on the same root.
#   sandbox/build.sh [IMAGE]          (default goex-sandbox:2)
# Environment: GOEX_SANDBOX_ROOT (the folder; default /var/lib/goex/sandbox/<image>),
# SANDBOX_SUITE (default: this host's Debian release, else bookworm), SANDBOX_MIRROR (a Debian
# mirror URI; default mmdebstrap's), SANDBOX_PACKAGES (more packages, comma-separated).
# Without a Docker engine the root is still built (bwrap uses it) and the import is skipped.
set -euo pipefail
IMAGE=${1:-${GOEX_SANDBOX_IMAGE:-goex-sandbox:2}}
ROOT=${GOEX_SANDBOX_ROOT:-/var/lib/goex/sandbox/${IMAGE//[:\/]/-}}
SUITE=${SANDBOX_SUITE:-$( . /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")}
SUITE=${SUITE:-bookworm}
PACKAGES=python3,python-is-python3,python3-pytest,python3-hypothesis,git,ca-certificates,procps,diffutils,patch,less,file,make,xz-utils,bzip2,unzip
[ -n "${SANDBOX_PACKAGES:-}" ] && PACKAGES="$PACKAGES,$SANDBOX_PACKAGES"

if ! command -v mmdebstrap >/dev/null; then
  echo "installing mmdebstrap ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q -o DPkg::Lock::Timeout=300 >&2
  apt-get install -y -q -o DPkg::Lock::Timeout=300 mmdebstrap >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/goex-sandbox-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The customize hook runs on the finished tree: mount points for what the sandbox binds in; no
# password files or root home (the code runs with CAP_DAC_OVERRIDE over a root-owned workspace and
# could read them, and nobody logs in), no apt state or caches.
HOOK='set -e; R="$1"; mkdir -p "$R/workspace" "$R/sandbox" "$R/tmp"; : > "$R/sandbox/code"; chmod 1777 "$R/tmp";
rm -rf "$R/root" "$R/etc/shadow" "$R/etc/shadow-" "$R/etc/gshadow" "$R/etc/gshadow-";
for f in resolv.conf hosts; do [ -e "$R/etc/$f" ] || : > "$R/etc/$f"; done;
rm -rf "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin "$R/var/cache/debconf/"*-old "$R/var/log/"*.log'
args=(--variant=minbase --include="$PACKAGES" --customize-hook="$HOOK" "$SUITE" "$WORK/rootfs.tar")
[ -n "${SANDBOX_MIRROR:-}" ] && args+=("$SANDBOX_MIRROR")
echo "building the Debian $SUITE root of $IMAGE with mmdebstrap ..." >&2
mmdebstrap --quiet "${args[@]}" >&2

# The folder: extracted beside its final place, then swapped in (a run never sees half a root).
mkdir -p "$(dirname "$ROOT")"
NEW="$ROOT.new.$$"
rm -rf "$NEW"; mkdir -p "$NEW"
tar -C "$NEW" --numeric-owner -xpf "$WORK/rootfs.tar"
"$NEW/usr/bin/python3" --version >/dev/null 2>&1 || true
if [ -e "$ROOT" ]; then mv "$ROOT" "$ROOT.old.$$"; fi
mv "$NEW" "$ROOT"
rm -rf "$ROOT.old.$$"
echo "sandbox root: $ROOT" >&2

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1' \
    --change 'WORKDIR /workspace' --change 'USER 65534:65534' --change 'CMD ["python3"]' \
    --change 'LABEL goex.sandbox.image=1' "$WORK/rootfs.tar" "$IMAGE" >/dev/null
  docker run --rm --network none --read-only --user 65534:65534 --cap-drop ALL "$IMAGE" \
    python -c 'import json, ssl, sqlite3, pytest, hypothesis; print("sandbox image ok: pytest", pytest.__version__)'
else
  echo "no Docker engine answers: the image $IMAGE was not imported (bwrap uses $ROOT)" >&2
fi
