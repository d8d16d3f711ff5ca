# Sourced by the project's scripts: the Pulumi toolchain, backend and secrets settings in one place.
# shellcheck shell=bash

DMP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DMP_ROOT
export DMP_CACHE="${DMP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/docker-machine-pulumi}"
export DMP_STATE="${DMP_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/docker-machine-pulumi}"
DMP_CONFIG_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/docker-machine-pulumi"

# Never reach out for plugins or CLI updates: everything is provided by scripts/toolchain.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=true

if [ -z "${DMP_TOOLCHAIN_BIN:-}" ]; then
  DMP_TOOLCHAIN_BIN="$("$DMP_ROOT/scripts/toolchain")"
  export DMP_TOOLCHAIN_BIN
fi
case ":$PATH:" in *":$DMP_TOOLCHAIN_BIN:"*) ;; *) export PATH="$DMP_TOOLCHAIN_BIN:$PATH" ;; esac

# State: a user already logged into a backend keeps it; otherwise a local file backend, no login.
dmp_logged_in() {
  local creds="${PULUMI_HOME:-$HOME/.pulumi}/credentials.json"
  [ -f "$creds" ] && "$DMP_ROOT/.venv/bin/python" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("current") else 1)' "$creds" 2>/dev/null
}
if [ -z "${PULUMI_BACKEND_URL:-}" ] && ! dmp_logged_in; then
  mkdir -p "$DMP_STATE/backend"
  export PULUMI_BACKEND_URL="file://$DMP_STATE/backend"
fi

# Secrets: a passphrase generated once into a 0600 file (never an empty passphrase).
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  if [ ! -s "$DMP_CONFIG_DIR/passphrase" ]; then
    mkdir -p "$DMP_CONFIG_DIR" && chmod 700 "$DMP_CONFIG_DIR"
    (umask 077 && head -c 32 /dev/urandom | base64 > "$DMP_CONFIG_DIR/passphrase.tmp" \
      && mv "$DMP_CONFIG_DIR/passphrase.tmp" "$DMP_CONFIG_DIR/passphrase")
  fi
  export PULUMI_CONFIG_PASSPHRASE_FILE="$DMP_CONFIG_DIR/passphrase"
fi
