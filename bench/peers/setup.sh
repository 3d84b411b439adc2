#!/usr/bin/env bash
# Peer libraries for the side-by-side benchmark (issue 5), each in its own virtual environment
# under .peers/ (git-ignored). mgrec never imports them. Recipes: ../shared/guides/anchors.md.
# Usage: bash bench/peers/setup.sh [recbole] [implicit] [lightfm]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
ROOT=.peers
mkdir -p "$ROOT"
make_env() {  # name, pip arguments...
    local name=$1; shift
    if [ -f "$ROOT/$name/.ok" ]; then echo "$name: ready"; return; fi
    rm -rf "${ROOT:?}/$name"
    "$PY" -m venv "$ROOT/$name"
    "$ROOT/$name/bin/pip" install -q --upgrade pip
    "$ROOT/$name/bin/pip" install -q "$@"
    touch "$ROOT/$name/.ok"
    echo "$name: installed"
}
install() {
    case "$1" in
    # run RecBole with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    recbole) make_env recbole torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<3" "scipy<1.12" "setuptools<81" ;;
    implicit) make_env implicit implicit==0.7.2 "numpy<2" scipy pandas ;;  # 0.7.2: the newest wheel here
    # LightFM's default build fails here (anchors.md)
    lightfm)
        if [ ! -f "$ROOT/lightfm/.ok" ]; then
            rm -rf "$ROOT/lightfm"; "$PY" -m venv "$ROOT/lightfm"
            # its setup.py needs the legacy (non PEP 517) build, which pip 25 dropped
            "$ROOT/lightfm/bin/pip" install -q "pip<25" wheel "setuptools<81" "numpy<2" scipy pandas
            "$ROOT/lightfm/bin/pip" install -q --no-use-pep517 lightfm==1.17
            touch "$ROOT/lightfm/.ok"
        fi
        echo "lightfm: ready" ;;
    *) echo "unknown peer $1" >&2; exit 2 ;;
    esac
}
PEERS=("$@")
[ ${#PEERS[@]} -gt 0 ] || PEERS=(recbole implicit lightfm)
for p in "${PEERS[@]}"; do install "$p"; done
