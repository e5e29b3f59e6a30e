#!/usr/bin/env bash
# The action's install step: a gitpulse already on PATH with the wanted
# version; else the release archive for this runner, verified against the
# sha256 list kept beside this script; else built from the action's source.
set -euo pipefail

wanted="${GITPULSE_WANTED_VERSION:-}"
if command -v gitpulse >/dev/null; then
  have="$(gitpulse --version | awk '{print $2}')"
  if [ -z "$wanted" ] || [ "$have" = "${wanted#v}" ]; then
    echo "gitpulse $have on PATH"
    exit 0
  fi
  echo "gitpulse $have on PATH, $wanted wanted"
fi

bin="${RUNNER_TEMP:-/tmp}/gitpulse-bin"
mkdir -p "$bin"
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) arch="" ;;
esac
archive="gitpulse-${wanted#v}-${arch}-unknown-linux-gnu.tar.gz"
sums="$GITHUB_ACTION_PATH/action/checksums.txt"
repo="${GITHUB_ACTION_REPOSITORY:-}"
if [ -n "$wanted" ] && [ -n "$arch" ] && [ -n "$repo" ] && [ "$(uname -s)" = Linux ] \
   && grep -q " $archive\$" "$sums" 2>/dev/null; then
  url="${GITHUB_SERVER_URL:-https://github.com}/$repo/releases/download/v${wanted#v}/$archive"
  if curl -fsSL --retry 3 -o "$bin/$archive" "$url"; then
    expected="$(grep " $archive\$" "$sums" | awk '{print $1}')"
    actual="$(sha256sum "$bin/$archive" | awk '{print $1}')"
    if [ "$expected" != "$actual" ]; then
      echo "::error title=gitpulse action::$archive does not match action/checksums.txt; not using it"
      exit 1
    fi
    tar -xzf "$bin/$archive" -C "$bin" gitpulse
    echo "$bin" >> "$GITHUB_PATH"
    echo "gitpulse ${wanted#v} from the release archive (sha256 verified)"
    exit 0
  fi
  echo "no release archive at $url; building from source"
fi

echo "building gitpulse from the action's source"
cargo install --locked --root "${RUNNER_TEMP:-/tmp}/gitpulse-root" --path "$GITHUB_ACTION_PATH/host"
echo "${RUNNER_TEMP:-/tmp}/gitpulse-root/bin" >> "$GITHUB_PATH"
