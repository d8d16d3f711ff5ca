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

# Team mode (docs/team.md): a shared backend and the team's secrets key, stored once per user by
# `scripts/machine backend set URL --key-file FILE`. PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE(_FILE) win.
if [ -z "${PULUMI_BACKEND_URL:-}" ] && [ -s "$DMP_CONFIG_DIR/backend.url" ]; then
  PULUMI_BACKEND_URL="$(cat "$DMP_CONFIG_DIR/backend.url")"
  export PULUMI_BACKEND_URL
fi
# The team backend's password stays in a 0600 passfile that PostgreSQL's clients (Pulumi's too) read: never in a URL
# on a command line or in an environment.
if [ -z "${PGPASSFILE:-}" ] && [ -s "$DMP_CONFIG_DIR/pgpass" ]; then
  export PGPASSFILE="$DMP_CONFIG_DIR/pgpass"
fi
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ] \
  && [ -s "$DMP_CONFIG_DIR/backend.key-file" ]; then
  PULUMI_CONFIG_PASSPHRASE_FILE="$(cat "$DMP_CONFIG_DIR/backend.key-file")"
  export PULUMI_CONFIG_PASSPHRASE_FILE
fi

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
# A secrets key that others can read is no secret: refuse it, in one line.
if [ -n "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ] && [ -e "$PULUMI_CONFIG_PASSPHRASE_FILE" ] \
  && [ -n "$(find "$PULUMI_CONFIG_PASSPHRASE_FILE" -maxdepth 0 -perm /077 2>/dev/null)" ]; then
  echo "Error: the secrets key $PULUMI_CONFIG_PASSPHRASE_FILE is readable by others: chmod 600 $PULUMI_CONFIG_PASSPHRASE_FILE" >&2
  exit 1
fi
# A stack whose config file carries no salt (a teammate's stack, or one kept out of git) is read with the secrets
# manager recorded in its state.
export PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER=true
