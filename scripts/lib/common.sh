# Shared by scripts/test and scripts/quickstart: say what we do, install what is missing.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

have_postgres() { ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }
have_nats() { command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ]; }

# Debian packages for the servers and the build. Services the packages would start are
# kept from starting: Sluice runs its own servers on its own ports.
install_packages() {
  local need=()
  have_nats || need+=(nats-server)
  command -v redis-server >/dev/null || need+=(redis-server)
  have_postgres || need+=(postgresql)
  command -v cc >/dev/null || need+=(gcc libc6-dev)
  command -v curl >/dev/null || need+=(curl ca-certificates)
  command -v runuser >/dev/null || need+=(util-linux)
  command -v python3 >/dev/null || need+=(python3)
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
  if [ "${#need[@]}" -gt 0 ]; then
    say "installing Debian packages: ${need[*]}"
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod +x "$policy" && added=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    [ "$added" = 1 ] && as_root rm -f "$policy"
  else
    say "Debian packages present (nats-server, redis-server, postgresql)"
  fi
}

# Debian's chromium, for the console's browser tests (tests/console.rs); scripts/test only,
# so a quickstart does not download a browser.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return
  say "installing Debian's chromium (the console's browser tests)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
}

# The Rust toolchain: cargo on PATH, or rustup's, or Debian's (if new enough).
MIN_RUST=1.89
ensure_rust() {
  [ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null; then
    if command -v rustup >/dev/null; then
      say "installing the stable Rust toolchain with rustup"
      rustup toolchain install stable --profile minimal
    else
      say "installing Debian's cargo and rustc"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cargo rustc
    fi
  fi
  local v
  v=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$v" | sort -V | head -1)" != "$MIN_RUST" ]; then
    die "rustc $v is older than $MIN_RUST; install a newer toolchain (rustup) and re-run"
  fi
  say "using $(cargo --version)"
}

# A project-local Python venv with the official OpenAI SDK (compatibility tests) and
# Playwright (the console's browser tests). Playwright drives the system chromium; its own
# browser download (`playwright install`) is never run.
ensure_python_sdk() {
  local venv=.venv
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv (Python venv for the OpenAI SDK and browser tests)"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    say "installing the openai Python package into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai
  fi
  if ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
    say "installing the playwright Python package into $venv (uses /usr/bin/chromium)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check playwright
  fi
}

# Validators for the deploy files (scripts/check-deploy), from PyPI into .venv-deploy:
# kubernetes-validate (Kubernetes' own OpenAPI schemas, offline), compose-spec (a strict
# Compose Specification parser), cloudcoil's KEDA models (generated from KEDA's CRDs).
DEPLOY_VALIDATORS=(kubernetes-validate==1.37.0 compose-spec==0.2.1 "cloudcoil.models.keda==2.16.1.0" pyyaml)
ensure_deploy_validators() {
  local venv=.venv-deploy
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv (validators for the deploy files)"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c 'import kubernetes_validate, compose_spec, cloudcoil.models.keda, yaml' 2>/dev/null; then
    say "installing deploy validators into $venv: ${DEPLOY_VALIDATORS[*]}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${DEPLOY_VALIDATORS[@]}"
  fi
}
