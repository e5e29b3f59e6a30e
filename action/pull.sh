#!/usr/bin/env bash
# The action's pull step. Every input arrives in the environment (never
# pasted into this script), is checked, and goes to gitpulse as one argv
# word: an input holding `$(...)` or quotes stays a literal.
set -euo pipefail

fail() { echo "::error title=gitpulse action::$1"; exit 2; }

[ -n "${INPUT_REPOSITORY:-}" ] || fail "the repository input is required"
server="${INPUT_GITHUB_SERVER_URL:-https://github.com}"
server="${server%/}"
# owner/name, as actions/checkout takes it, lives on the workflow's server.
if [[ "$INPUT_REPOSITORY" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
  url="$server/$INPUT_REPOSITORY.git"
else
  url="$INPUT_REPOSITORY"
fi

# scheme://host[:port] of a URL (empty for scp-like and paths).
origin_of() {
  if [[ "$1" =~ ^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/]*) ]]; then
    local scheme="${BASH_REMATCH[1],,}" authority="${BASH_REMATCH[2]##*@}"
    printf '%s://%s' "$scheme" "${authority,,}"
  fi
}
# The repository and the path go last, after `--`: a repository input that
# starts with `-` is a repository, never an option.
args=(pull)
args+=(--mode "${INPUT_MODE:-ff}" --max-attempts "${INPUT_MAX_ATTEMPTS:-5}" --timeout "${INPUT_TIMEOUT:-2m}")
args+=(--backoff-base "${INPUT_BACKOFF_BASE:-1s}" --backoff-max "${INPUT_BACKOFF_MAX:-30s}")
[ -z "${INPUT_REF:-}" ] || args+=(--ref "$INPUT_REF")
[ -z "${INPUT_SEMVER:-}" ] || args+=(--semver "$INPUT_SEMVER")
while IFS= read -r dir; do
  [ -z "$dir" ] || args+=(--sparse "$dir")
done <<< "${INPUT_SPARSE:-}"
[ -z "${INPUT_DEPTH:-}" ] || args+=(--depth "$INPUT_DEPTH")
[ -z "${INPUT_DEADLINE:-}" ] || args+=(--deadline "$INPUT_DEADLINE")
case "${INPUT_SUBMODULES:-false}" in
  true) args+=(--submodules) ;;
  false) ;;
  *) fail "submodules must be true or false" ;;
esac
case "${INPUT_SUMMARY:-true}" in
  true) ;;
  false) args+=(--no-step-summary) ;;
  *) fail "summary must be true or false" ;;
esac
[ -z "${INPUT_POLICY:-}" ] || args+=(--policy "${GITHUB_WORKSPACE:-.}/$INPUT_POLICY")
while IFS= read -r line; do
  [ -z "$line" ] || args+=(--plugin-config "$line")
done <<< "${INPUT_POLICY_CONFIG:-}"
[ -z "${INPUT_NOTIFY_CONFIG:-}" ] || args+=(--notify-config "${GITHUB_WORKSPACE:-.}/$INPUT_NOTIFY_CONFIG")

# The token goes to gitpulse through its own variable and never into
# .git/config (a composite action has no post step to remove it again). The
# job's own token (the default) goes only home, to github-server-url, as
# actions/checkout sends it; a token the workflow passes explicitly goes to
# any https remote.
export GITPULSE_ACTION_TOKEN="${INPUT_TOKEN:-}"
default_token="${GITPULSE_DEFAULT_TOKEN:-}"
unset INPUT_TOKEN GITPULSE_DEFAULT_TOKEN
home=$(origin_of "$server/")
there=$(origin_of "$url")
if [ -n "$GITPULSE_ACTION_TOKEN" ]; then
  if [ -n "$there" ] && [ "$there" = "$home" ]; then
    args+=(--token-env GITPULSE_ACTION_TOKEN)
  elif [ "$GITPULSE_ACTION_TOKEN" != "$default_token" ] && [[ "$url" == https://* ]]; then
    args+=(--token-env GITPULSE_ACTION_TOKEN)
  elif [[ "$url" == http://* || "$url" == https://* ]]; then
    echo "gitpulse: $there is not $home (github-server-url): the job's token is not sent there; pass token: explicitly to send one"
  fi
fi

scratch=""
cleanup() { [ -z "$scratch" ] || rm -rf "$scratch"; }
trap cleanup EXIT
if [ -n "${INPUT_SSH_KEY:-}" ]; then
  scratch="$(mktemp -d "${RUNNER_TEMP:-/tmp}/gitpulse-ssh.XXXXXX")"
  (umask 077 && printf '%s\n' "$INPUT_SSH_KEY" > "$scratch/key")
  args+=(--ssh-key "$scratch/key")
  if [ -n "${INPUT_SSH_KNOWN_HOSTS:-}" ]; then
    printf '%s\n' "$INPUT_SSH_KNOWN_HOSTS" > "$scratch/known_hosts"
    args+=(--known-hosts "$scratch/known_hosts")
  fi
fi
unset INPUT_SSH_KEY

gitpulse "${args[@]}" -- "$url" "${GITHUB_WORKSPACE:-.}/${INPUT_PATH:-.}"
