#!/usr/bin/env bash
# Usage: scripts/install_deps.sh VENV_PYTHON UV_VERSION [FIRST_PIN...]
#
# Install FIRST_PINs (torch and torchvision), then geomed-seg (editable, with its [dev]
# extra) and every pin of requirements.lock into the virtualenv of VENV_PYTHON.
#
# With uv (a faster installer: parallel index queries, downloads and unpacking) when it
# installs from the package index, else with pip; the versions are the same either way
# (the FIRST_PINs and `-c requirements.lock`). uv does not read pip's configuration, so
# pip's index URL, extra index URLs, find-links and constraint files (local wheel folders
# and indexes on some machines: where torch 2.14.1 and its CUDA libraries lie here) are
# passed to it, and `--index-strategy unsafe-best-match` makes it choose among all indexes
# as pip does. Any uv failure falls back to pip. Run from the repository root.
set -u
py=$1
uv_version=${2:-0.13.8}
shift 2
first=("$@")
bin=$(dirname "$py")

pipconf() { "$py" -m pip config get "global.$1" 2>/dev/null || true; }

with_pip() {
  if [ ${#first[@]} -gt 0 ]; then "$py" -m pip install -q "${first[@]}" || exit 1; fi
  exec "$py" -m pip install -q -c requirements.lock -e ".[dev]"
}

if ! "$py" -m pip install -q "uv==$uv_version" || [ ! -x "$bin/uv" ]; then
  echo "note: uv is unavailable; installing the dependencies with pip" >&2
  with_pip
fi
args=()
index=${PIP_INDEX_URL:-$(pipconf index-url)}
[ -n "$index" ] && args+=(--index-url "$index")
for u in $(pipconf extra-index-url) ${PIP_EXTRA_INDEX_URL:-}; do args+=(--extra-index-url "$u"); done
for u in $(pipconf find-links) ${PIP_FIND_LINKS:-}; do args+=(--find-links "$u"); done
for c in $(pipconf constraint) ${PIP_CONSTRAINT:-}; do args+=(--constraint "$c"); done
uv() { "$bin/uv" pip install --python "$py" --quiet --index-strategy unsafe-best-match "${args[@]}" "$@"; }
if uv "${first[@]}" && uv -c requirements.lock -e ".[dev]"; then
  exit 0
fi
echo "note: uv could not install the dependencies; installing them with pip" >&2
with_pip
