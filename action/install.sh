#!/usr/bin/env bash
# The action's install step. In order:
#   1. a gitpulse on PATH with the wanted version (any version when none is
#      wanted);
#   2. the release archive for this runner, verified against the SHA256SUMS
#      published in the same release (an archive that does not match is
#      refused and fails the step; one that is not listed is never used);
#   3. built from the action's own source (minutes).
# The wanted version is the `version` input, else, when the workflow uses
# the action at a release tag (`@v1`, `@v1.4`, `@v1.4.2`), the version of
# the action's own source: the release that tag points into.
set -euo pipefail

fail() { echo "::error title=gitpulse action::$1"; exit 1; }

action_path="${GITHUB_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}"
wanted="${GITPULSE_WANTED_VERSION:-}"
wanted="${wanted#v}"
if [ -z "$wanted" ] && [[ "${GITPULSE_ACTION_REF:-}" =~ ^v[0-9]+(\.[0-9]+){0,2}$ ]]; then
  wanted="$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$action_path/host/Cargo.toml" | head -n 1)"
  echo "the action is used at $GITPULSE_ACTION_REF: gitpulse $wanted"
fi
if [ -n "$wanted" ] && ! [[ "$wanted" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]]; then
  fail "version must be a release version such as 1.4.2 (it is \"$wanted\")"
fi

if command -v gitpulse >/dev/null; then
  have="$(gitpulse --version | awk '{print $2}')"
  if [ -z "$wanted" ] || [ "$have" = "$wanted" ]; then
    echo "gitpulse $have on PATH"
    exit 0
  fi
  echo "gitpulse $have on PATH, $wanted wanted"
fi

# The release's archive for this runner, if there is one.
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64 | Linux-amd64) target=x86_64-unknown-linux-gnu ;;
  Linux-aarch64 | Linux-arm64) target=aarch64-unknown-linux-gnu ;;
  Darwin-arm64 | Darwin-aarch64) target=aarch64-apple-darwin ;;
  *) target="" ;;
esac
sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | awk '{print $1}'
}
fetch() { curl -fsSL --retry 3 --max-time 300 -o "$2" "$1"; }

if [ -n "$wanted" ] && [ -n "$target" ]; then
  server="${GITHUB_SERVER_URL:-https://github.com}"
  repo="${GITPULSE_ACTION_REPOSITORY:-}"
  releases="${GITPULSE_DOWNLOAD_URL:-}"
  [ -n "$releases" ] || [ -z "$repo" ] || releases="${server%/}/$repo/releases/download"
  if [ -n "$releases" ]; then
    releases="${releases%/}/v$wanted"
    archive="gitpulse-$wanted-$target.tar.gz"
    bin="$(mktemp -d "${RUNNER_TEMP:-/tmp}/gitpulse-bin.XXXXXX")"
    if fetch "$releases/SHA256SUMS" "$bin/SHA256SUMS" && fetch "$releases/$archive" "$bin/$archive"; then
      expected="$(awk -v name="$archive" '$2 == name || $2 == "*" name {print $1}' "$bin/SHA256SUMS")"
      [ -n "$expected" ] || fail "$archive is not listed in the release's SHA256SUMS; not using it"
      actual="$(sha256 "$bin/$archive")"
      if [ "$expected" != "$actual" ]; then
        rm -f "$bin/$archive"
        fail "$archive does not match the release's SHA256SUMS (expected $expected, got $actual); not using it"
      fi
      tar -xzf "$bin/$archive" -C "$bin" gitpulse
      rm -f "$bin/$archive" "$bin/SHA256SUMS"
      have="$("$bin/gitpulse" --version | awk '{print $2}')"
      [ "$have" = "$wanted" ] || fail "the archive of $wanted holds gitpulse $have"
      echo "$bin" >> "${GITHUB_PATH:-/dev/null}"
      echo "gitpulse $wanted from the release archive (sha256 verified against the release's SHA256SUMS)"
      exit 0
    fi
    rm -rf "$bin"
    echo "no release archive of $wanted for $target at $releases; building from source"
  fi
fi

echo "building gitpulse from the action's source (a few minutes; set version to use a release)"
root="${RUNNER_TEMP:-/tmp}/gitpulse-root"
cargo install --locked --root "$root" --path "$action_path/host"
echo "$root/bin" >> "${GITHUB_PATH:-/dev/null}"
