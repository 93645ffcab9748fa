#!/usr/bin/env bash
# Build the sandbox image (default goex-sandbox:1) without a registry: python3, bash, coreutils and
# setpriv are copied from this host, with every library ldd lists for them, into an empty image.
#   sandbox/build.sh [IMAGE]        (needs a running Docker engine)
set -euo pipefail
IMAGE=${1:-${GOEX_SANDBOX_IMAGE:-goex-sandbox:1}}
HERE=$(cd "$(dirname "$0")" && pwd)
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
R="$CTX/rootfs"
PY=$(readlink -f "${SANDBOX_PYTHON:-/usr/bin/python3}")
PYLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mkdir -p "$R"/{usr/bin,usr/lib,usr/lib64,tmp,workspace,sandbox,etc,dev,proc,sys}
ln -s usr/bin "$R/bin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
cp "$PY" "$R/usr/bin/"
for n in python3 python; do [ -e "$R/usr/bin/$n" ] || ln -s "$(basename "$PY")" "$R/usr/bin/$n"; done
cp "$(type -P bash)" "$R/usr/bin/bash"; ln -s bash "$R/usr/bin/sh"
for b in setpriv sleep ls cat env mkdir rm cp mv echo true false head tail wc sort grep sed chmod ln touch id; do
  p=$(type -P "$b" || true)
  [ -n "$p" ] && cp -L "$p" "$R/usr/bin/$b"
done
mkdir -p "$R$PYLIB"
tar -C "$PYLIB" --exclude=./test --exclude='./idlelib' --exclude='./tkinter' --exclude='./turtledemo' \
    --exclude='__pycache__' -cf - . | tar -C "$R$PYLIB" -xf -
for f in "$R"/usr/bin/* "$R$PYLIB"/lib-dynload/*.so; do
  [ -L "$f" ] || ldd "$f" 2>/dev/null || true
done | awk '/=> \//{print $3} /^[ \t]*\/lib64/{print $1}' | sort -u | while read -r lib; do
  dest=$lib; case $lib in /lib*) dest=/usr$lib;; esac
  mkdir -p "$R$(dirname "$dest")"; cp -L "$lib" "$R$dest"
done
echo 'root:x:0:0:root:/root:/usr/sbin/nologin' >"$R/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >>"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
chmod 1777 "$R/tmp"
cp "$HERE/Dockerfile" "$CTX/Dockerfile"
if ! log=$(docker build -q -t "$IMAGE" --label goex.sandbox.image=1 "$CTX" 2>&1); then
  echo "$log" >&2; exit 1
fi
docker run --rm --network none --read-only --user 65534:65534 --cap-drop ALL "$IMAGE" \
  python3 -c 'import json, ssl, sqlite3, ctypes; print("sandbox image ok")'
