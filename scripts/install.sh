#!/usr/bin/env bash
# Set up euclip in ./.venv from nothing but Python 3.10+.
#   bash scripts/install.sh          # the package (for `euclip demo`, training, evaluation)
#   bash scripts/install.sh --test   # plus the test tools and the system packages tests use
#                                    # (WordNet 3.0 from Debian's wordnet-base; Chromium for the report test)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# CPU/GPU builds of torch: pip takes the version pinned here (this machine serves it from local disk).
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  # Only its shipped class-name and template files are read: skip its heavy dependencies (transformers, ...).
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "clip-benchmark>=1.5"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    missing=()
    dpkg -s wordnet-base >/dev/null 2>&1 || missing+=(wordnet-base)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  else
    echo "note: run 'apt-get install wordnet-base chromium' as root for the WordNet and HTML-report tests" >&2
  fi
else
  .venv/bin/pip install -q --disable-pip-version-check -e .
fi
