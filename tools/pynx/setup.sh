#!/usr/bin/env bash
# A venv with PyNX 2025.1 for the side-by-side phasing benchmark (issue 19):
#   tools/pynx/setup.sh [VENV]        (default .venv-pynx, ignored by git)
# PyNX is not on PyPI under its name; Debian ships it (python3-pynx, sid). Its Python code
# is unpacked from the .deb (checked against the sha256 below) and put on the venv's path;
# the dependencies come from PyPI, pinned in tools/pynx/requirements.txt. Only the CPU
# operators are used (no OpenCL or CUDA). Needs python3 with venv, curl and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-pynx}
DEB=python3-pynx_2025.1-4+b1_amd64.deb
URL=http://deb.debian.org/debian/pool/main/p/pynx/$DEB
SHA=6de174bf0abc02661dfba1753a55a2bab4b27560b2ba7dc1f758f3cb47b678d3
mkdir -p "$VENV"
if [ ! -s "$VENV/$DEB" ]; then
    curl -fsSL -o "$VENV/$DEB.part" "$URL" || { echo "setup.sh: cannot download $URL" >&2; exit 1; }
    mv "$VENV/$DEB.part" "$VENV/$DEB"
fi
echo "$SHA  $VENV/$DEB" | sha256sum -c --quiet - || { echo "setup.sh: $DEB: checksum differs" >&2; exit 1; }
rm -rf "$VENV/deb" && dpkg-deb -x "$VENV/$DEB" "$VENV/deb"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r tools/pynx/requirements.txt
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$(cd "$VENV/deb/usr/lib/python3/dist-packages" && pwd)" > "$site/pynx_deb.pth"
"$VENV/bin/python" -c 'import pynx.cdi, importlib.metadata as m; print("PyNX", m.version("pynx"), "ready")'
