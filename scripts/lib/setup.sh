# Sourced by scripts/up and scripts/test: installs what pinet needs on a
# Debian machine and prepares the project's virtual environment in .venv.
# Idempotent and quick when nothing changed.
set -euo pipefail

PINET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PINET_VENV=${PINET_VENV:-$PINET_ROOT/.venv}
export PINET_ROOT PINET_VENV

# Debian packages (command they provide) the services, tests and benchmarks use.
PINET_APT_PACKAGES=(
  "etcd-server:etcd" "etcd-client:etcdctl" "nftables:nft" "iproute2:ip"
  "dnsutils:dig" "conntrack:conntrack" "procps:pgrep" "docker-compose:docker-compose"
  "nginx-light:nginx" "curl:curl" "nodejs:node" "npm:npm"
)

pinet_log() { printf '[setup] %s\n' "$*" >&2; }

pinet_apt() {
  local missing=() entry pkg cmd
  for entry in "${PINET_APT_PACKAGES[@]}" "$@"; do
    pkg=${entry%%:*}; cmd=${entry#*:}
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    pinet_log "missing Debian packages: ${missing[*]} (run as root to install them)"; return 1
  fi
  pinet_log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Packages must not start services (nginx on port 80, etcd on 2379) in the
  # machine's namespace: pinet runs its own, inside its namespaces.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [[ -z $made_policy ]] || rm -f "$policy"
  # Debian starts etcd-server as a system service on 2379; pinet runs its own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
}

pinet_python() {
  local candidate
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  pinet_log "Python 3.11 or newer is needed"; return 1
}

pinet_venv() {
  local stamp="$PINET_VENV/.pinet-installed" want
  want=$(cat "$PINET_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [[ ! -x $PINET_VENV/bin/python ]]; then
    pinet_log "creating virtual environment in $PINET_VENV"
    if ! "$(pinet_python)" -m venv "$PINET_VENV" 2>/dev/null; then
      pinet_apt "python3-venv:false"
      "$(pinet_python)" -m venv "$PINET_VENV"
    fi
  fi
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    pinet_log "installing pinet and its dependencies into $PINET_VENV"
    "$PINET_VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$PINET_VENV/bin/python" -m pip install -q -e "$PINET_ROOT[dev]"
    echo "$want" >"$stamp"
  fi
}

pinet_setup() {
  pinet_apt "$@"
  pinet_venv
}
