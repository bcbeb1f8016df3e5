#!/usr/bin/env bash
# Install everything hubstack needs on a Debian/Ubuntu machine, idempotently:
#   - Debian packages: Python 3 (for the world-readable default environment), Node.js
#     and npm (for configurable-http-proxy), e2fsprogs/util-linux (loop volumes), git,
#     acl (setfacl: groups' shared folders);
#     with --test also Chromium for the browser tests, Azurite (storage tests), sudo (for the tests of
#     `submit_as: sudo`) and the local Slurm cluster's packages
#     (scripts/slurm-cluster.sh install).
#   - uv, configurable-http-proxy, the hub's virtualenv (.venv) and the default
#     single-user environment with its site config (default-environment/etc) under
#     $HUBSTACK_PREFIX (default /opt/hubstack).
# Every step checks first and does nothing when its result is already there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${HUBSTACK_PREFIX:-/opt/hubstack}
uv_version=0.13.8
chp_version=5.3.0
with_test=0
with_vscode=0
with_r=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 with_vscode=1 with_r=1 ;;
    --vscode) with_vscode=1 ;;
    --r) with_r=1 ;;
    *) echo "setup.sh: unknown option $arg (allowed: --test, --vscode, --r)" >&2; exit 2 ;;
  esac
done

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: $1 needs root; run it with sudo" >&2
    exit 1
  fi
}

# 1. Debian packages
# Checked by the command each provides: Node.js may come from elsewhere (e.g. NodeSource,
# whose nodejs package carries npm), and that must count as installed.
needs=(/usr/bin/python3:python3 node:nodejs npm:npm mkfs.ext4:e2fsprogs losetup:mount git:git setfacl:acl)
# slapd and ldap-utils: the LDAP directory the login tests start.
[ "$with_test" = 1 ] && needs+=(chromium:chromium sudo:sudo /usr/sbin/slapd:slapd ldapadd:ldap-utils)
missing=()
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# PostgreSQL: the usage ledger's tests start a throwaway cluster (Debian keeps initdb off PATH).
if [ "$with_test" = 1 ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  need_root "installing ${missing[*]}"
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. uv (in its own small venv, so a system Python marked externally-managed is fine)
uv=$(command -v uv || true)
if [ -z "$uv" ] || ! "$uv" --version | grep -q "$uv_version"; then
  uv="$prefix/tools/bin/uv"
  if [ ! -x "$uv" ] || ! "$uv" --version | grep -q "$uv_version"; then
    need_root "installing uv into $prefix/tools"
    step "uv $uv_version"
    /usr/bin/python3 -m venv "$prefix/tools"
    "$prefix/tools/bin/pip" install -q --disable-pip-version-check "uv==$uv_version"
  fi
fi
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy

# 2b. rattler for conda builds, beside uv: the build account runs it, so it lives in this
# world-readable prefix, not in the hub's checkout; the version is the one pyproject.toml pins.
rattler_version=$(sed -n 's/.*"py-rattler==\([^"]*\)".*/\1/p' "$here/pyproject.toml")
if ! "$prefix/tools/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('py-rattler') != '$rattler_version')" 2>/dev/null; then
  need_root "installing py-rattler into $prefix/tools"
  step "py-rattler $rattler_version (conda builds)"
  [ -x "$prefix/tools/bin/pip" ] || /usr/bin/python3 -m venv "$prefix/tools"
  "$prefix/tools/bin/pip" install -q --disable-pip-version-check "py-rattler==$rattler_version"
fi

# 3. configurable-http-proxy from npm
chp="$prefix/node/node_modules/.bin/configurable-http-proxy"
if [ ! -x "$chp" ] || ! "$chp" --version 2>/dev/null | grep -q "$chp_version"; then
  need_root "installing configurable-http-proxy into $prefix/node"
  step "configurable-http-proxy $chp_version"
  mkdir -p "$prefix/node"
  npm install --silent --no-audit --no-fund --prefix "$prefix/node" \
    "configurable-http-proxy@$chp_version"
fi

# With --test, the OpenID Connect provider the login tests start (oidc-provider, from npm).
oidc_version=9.13.3
if [ "$with_test" = 1 ] && ! grep -qs "\"version\": \"$oidc_version\"" \
    "$prefix/test-node/node_modules/oidc-provider/package.json"; then
  need_root "installing oidc-provider into $prefix/test-node"
  step "oidc-provider $oidc_version (tests)"
  mkdir -p "$prefix/test-node"
  npm install --silent --no-audit --no-fund --prefix "$prefix/test-node" \
    "oidc-provider@$oidc_version"
fi

# With --test, Azurite (Microsoft's Azure Storage emulator, from npm) for the storage tests.
azurite_version=3.37.0
if [ "$with_test" = 1 ] && ! grep -qs "\"version\": \"$azurite_version\"" \
    "$prefix/test-node/node_modules/azurite/package.json"; then
  need_root "installing azurite into $prefix/test-node"
  step "azurite $azurite_version (tests)"
  mkdir -p "$prefix/test-node"
  npm install --silent --no-audit --no-fund --prefix "$prefix/test-node" \
    "azurite@$azurite_version"
fi

# 4. The hub's own virtualenv (in the checkout)
step "hub virtualenv (.venv)"
sync_args=(--frozen --python /usr/bin/python3)
# Without --test, leave test tools a developer already has in place (--inexact).
[ "$with_test" = 1 ] || sync_args+=(--no-dev --inexact)
(cd "$here" && "$uv" sync -q "${sync_args[@]}")

# 5. The default single-user environment, world-readable so every user account can run it
env_dir="$prefix/envs/default"
reqs="$here/default-environment/requirements.txt"
overrides="$here/src/hubstack/envs/server-overrides.txt"
stamp="$env_dir/.hubstack-requirements.sha256"
# The stamp covers what is installed and how: requirements, overrides, bytecode.
want=$( (cat "$reqs" "$overrides"; echo compile-bytecode) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  need_root "installing the default environment into $env_dir"
  step "default environment ($env_dir)"
  umask 022
  # A venv's scripts hard-code its path, so it is built in place; the stamp, written
  # last, marks it complete, and an unstamped directory is rebuilt from scratch.
  rm -rf "$env_dir"
  "$uv" venv -q --python /usr/bin/python3 "$env_dir"
  # Bytecode is compiled now: the prefix is read-only to the users whose servers import
  # it, so they could never cache it, and compiling on every start costs seconds.
  "$uv" pip install -q --compile-bytecode --python "$env_dir/bin/python" \
    --override "$overrides" -r "$reqs"
  chmod -R a+rX "$prefix/envs"
  echo "$want" > "$stamp"
fi

# 5b. hubstack's packages in the default environment, each reinstalled when its source
# changes: hubdata and fsspec's hub:// (default-environment/hubdata), and the kernels forked
# from a kernel parent in forked servers (default-environment/kernels).
for package in hubdata kernels; do
  package_src="$here/default-environment/$package"
  package_stamp="$env_dir/.hubstack-$package.sha256"
  want_package=$(cd "$package_src" \
    && find . -type f \( -name '*.py' -o -name '*.toml' -o -name '*.json' \) \
    | LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -d' ' -f1)
  if [ ! -f "$package_stamp" ] || [ "$(cat "$package_stamp")" != "$want_package" ]; then
    need_root "installing $package into $env_dir"
    step "$package ($env_dir)"
    umask 022
    # Their dependencies (fsspec, adlfs, s3fs, jupyter-fsspec; ipykernel) are pinned in
    # requirements.txt, installed above.
    "$uv" pip install -q --reinstall --no-deps --compile-bytecode \
      --python "$env_dir/bin/python" "$package_src"
    chmod -R a+rX "$prefix/envs"
    echo "$want_package" > "$package_stamp"
  fi
done

# 6. The default environment's site config (default-environment/etc, e.g. ipyparallel's Slurm
# settings in etc/ipython), copied over the environment's own etc. Its stamp is the
# checksum list of the shipped files, so a changed file is copied again without rebuilding
# the environment, and a file no longer shipped is removed.
etc_src="$here/default-environment/etc"
etc_stamp="$env_dir/.hubstack-etc.sha256"
want_etc=$(cd "$etc_src" && find . -type f ! -name '*.pyc' | LC_ALL=C sort | xargs -r sha256sum)
if [ ! -f "$etc_stamp" ] || [ "$(cat "$etc_stamp")" != "$want_etc" ]; then
  need_root "installing the default environment's site config into $env_dir/etc"
  step "default environment site config ($env_dir/etc)"
  umask 022
  if [ -f "$etc_stamp" ]; then
    while read -r _ file; do rm -f "$env_dir/etc/$file"; done < "$etc_stamp"
  fi
  while read -r _ file; do
    [ -z "$file" ] || install -D -m 644 "$etc_src/$file" "$env_dir/etc/$file"
  done <<< "$want_etc"
  chmod -R a+rX "$env_dir/etc"
  echo "$want_etc" > "$etc_stamp"
fi

# 6b. Interfaces besides JupyterLab (default-environment/interfaces.txt) in the default
# environment, added to it with the same pins and overrides.
interfaces="$here/default-environment/interfaces.txt"
interfaces_stamp="$env_dir/.hubstack-interfaces.sha256"
want_interfaces=$(cat "$reqs" "$overrides" "$interfaces" | sha256sum | cut -d' ' -f1)
if [ ! -f "$interfaces_stamp" ] || [ "$(cat "$interfaces_stamp")" != "$want_interfaces" ]; then
  need_root "installing the interfaces into $env_dir"
  step "interfaces: jupyter-server-proxy, Voilà ($env_dir)"
  umask 022
  "$uv" pip install -q --compile-bytecode --python "$env_dir/bin/python" \
    --override "$overrides" -r "$reqs" -r "$interfaces"
  chmod -R a+rX "$prefix/envs"
  echo "$want_interfaces" > "$interfaces_stamp"
fi

# 6c. With --vscode (or --test): VS Code in the browser, code-server from npm, into
# $prefix/code-server (about 300 MB), linked into the default environment's bin.
# code-server's versions each need one Node.js major version: 4.100.3 is the last for
# Node.js 20, the one Debian 12's NodeSource setups and this machine have.
code_server_version=4.100.3
code_server_node=20
code_server="$prefix/code-server/node_modules/.bin/code-server"
if [ "$with_vscode" = 1 ] && ! grep -qs "\"version\": \"$code_server_version\"" \
    "$prefix/code-server/node_modules/code-server/package.json"; then
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" != "$code_server_node" ]; then
    echo "setup.sh: code-server $code_server_version needs Node.js $code_server_node;" \
      "this machine has $(node --version)" >&2
    exit 1
  fi
  need_root "installing code-server into $prefix/code-server"
  step "code-server $code_server_version ($prefix/code-server)"
  # Its native modules are built here (kerberos, node-pty, spdlog...).
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends build-essential pkg-config libkrb5-dev \
    libx11-dev libxkbfile-dev libsecret-1-dev ripgrep
  # VS Code's search runs ripgrep, which @vscode/ripgrep's install script would download
  # from GitHub (out of reach of a hub that only sees package registries). It takes an
  # archive already in its download cache instead: Debian's rg, of the same 13.0.0 release.
  rg_cache=$(mktemp -d)
  trap 'rm -rf "$rg_cache"' EXIT
  mkdir "$rg_cache/vscode-ripgrep-cache-1.15.11"
  cp /usr/bin/rg "$rg_cache/rg"
  tar -czf "$rg_cache/vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" \
    -C "$rg_cache" rg
  rm -rf "$prefix/code-server"
  mkdir -p "$prefix/code-server"
  umask 022
  # --unsafe-perm: code-server's own install script insists on it when run as root;
  # npm_config_yes: node-pty's builds node-gyp through npx, which asks before fetching it.
  TMPDIR="$rg_cache" npm_config_yes=true npm install --silent --no-audit --no-fund \
    --unsafe-perm=true \
    --prefix "$prefix/code-server" "code-server@$code_server_version"
  chmod -R a+rX "$prefix/code-server"
fi
if [ "$with_vscode" = 1 ] && [ "$(readlink "$env_dir/bin/code-server")" != "$code_server" ]; then
  ln -sfn "$code_server" "$env_dir/bin/code-server"
fi

# 6d. With --r (or --test): R and its Jupyter kernel (IRkernel) from Debian's packages, and
# remotes (the tests' conda channel repackages these for R environments built from repositories).
if [ "$with_r" = 1 ] && { [ ! -f /usr/share/jupyter/kernels/ir/kernel.json ] ||
  [ ! -d /usr/lib/R/site-library/remotes ]; }; then
  need_root "installing R and IRkernel"
  step "R, IRkernel and remotes (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends r-base-core r-cran-irkernel r-cran-remotes
fi

# 7. With --test, the packages of the local Slurm cluster the Slurm tests run on
# (slurm-cluster.sh installs only what is missing).
if [ "$with_test" = 1 ]; then
  need_root "installing the local Slurm cluster's packages"
  step "local Slurm cluster packages"
  "$here/scripts/slurm-cluster.sh" install
fi
step "setup complete"
