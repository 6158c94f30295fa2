# shellcheck shell=bash
# What the deploy tests render and validate with, from Debian's packages and the npm registry
# only. Source it; then deploy_tooling CACHE_DIR sets:
#   KUBECTL        kubectl of Debian's kubernetes-client (1.20, kustomize v2.0): the one that
#                  tools/setup installs, or, where another package owns /usr/bin/kubectl, the
#                  same Debian package unpacked into CACHE_DIR (apt-get download + dpkg -x)
#   DEPLOY_NODE_MODULES  node_modules of tests/deploy/package-lock.json, installed by `npm ci`
#                  into CACHE_DIR/npm-<hash of the lockfile>/ once (never into the source tree)
# It returns 77 (ctest's skip code) after saying why when the npm registry cannot be reached,
# and 1 on any other failure; it never exits the calling shell.

_deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_deploy_kubectl() {
  local cache="$1"
  local status
  status="$(dpkg-query -W -f='${db:Status-Status}' kubernetes-client 2>/dev/null || true)"
  if [[ "$status" == installed ]]; then
    KUBECTL=/usr/bin/kubectl
    return 0
  fi
  local version
  version="$(apt-cache policy kubernetes-client 2>/dev/null | sed -n 's/^ *Candidate: //p')"
  if [[ -z "$version" || "$version" == "(none)" ]]; then
    echo "deploy: Debian's kubernetes-client is not installed and apt knows no candidate for it" \
         "(run tools/setup, or apt-get update)" >&2
    return 1
  fi
  local dir="$cache/kubernetes-client-${version//[^A-Za-z0-9.+-]/_}"
  if [[ ! -x "$dir/root/usr/bin/kubectl" ]]; then
    local tmp
    tmp="$(mktemp -d "$cache/kubernetes-client.XXXXXX")" || return 1
    if ! (cd "$tmp" && apt-get download -q "kubernetes-client=$version" >download.log 2>&1 &&
          dpkg -x kubernetes-client_*.deb root); then
      cat "$tmp/download.log" >&2
      echo "deploy: could not unpack Debian's kubernetes-client $version into $cache" >&2
      rm -rf "$tmp"
      return 1
    fi
    rm -f "$tmp"/*.deb
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
  KUBECTL="$dir/root/usr/bin/kubectl"
}

_deploy_node_modules() {
  local cache="$1"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "deploy: node and npm are needed (tools/setup installs Debian's nodejs and npm)" >&2
    return 1
  fi
  local hash dir
  hash="$(cat "$_deploy_dir/package.json" "$_deploy_dir/package-lock.json" | sha256sum | cut -c1-16)"
  dir="$cache/npm-$hash"
  if [[ ! -f "$dir/installed" ]]; then
    rm -rf "$dir"
    mkdir -p "$dir" || return 1
    cp "$_deploy_dir/package.json" "$_deploy_dir/package-lock.json" "$dir/"
    if ! (cd "$dir" && npm_config_cache="$cache/npm-cache" timeout 300 npm ci --no-audit --no-fund \
            --loglevel=error >npm.log 2>&1); then
      if ! (cd "$dir" && npm_config_cache="$cache/npm-cache" timeout 30 npm ping >ping.log 2>&1); then
        echo "deploy: SKIPPED: the npm registry cannot be reached (npm ping failed), so the" \
             "schema packages of tests/deploy/package-lock.json cannot be installed:" >&2
        sed 's/^/  npm: /' "$dir/ping.log" | tail -n 5 >&2
        rm -rf "$dir"
        return 77
      fi
      cat "$dir/npm.log" >&2
      echo "deploy: npm ci failed in $dir (the registry answers: see above)" >&2
      rm -rf "$dir"
      return 1
    fi
    touch "$dir/installed"
  fi
  DEPLOY_NODE_MODULES="$dir/node_modules"
}

deploy_tooling() {
  local cache="${1:?usage: deploy_tooling CACHE_DIR}"
  mkdir -p "$cache" || return 1
  _deploy_kubectl "$cache" || return $?
  _deploy_node_modules "$cache" || return $?
  export KUBECTL DEPLOY_NODE_MODULES
}

# deploy_render DIR OUT: kubectl kustomize DIR > OUT, offline (no cluster: kubectl's kustomize
# reads only the directory); its warnings are shown.
deploy_render() {
  local dir="$1" out="$2"
  if ! "$KUBECTL" kustomize "$dir" >"$out" 2>"$out.stderr"; then
    cat "$out.stderr" >&2
    echo "deploy: kubectl kustomize $dir failed ($KUBECTL)" >&2
    return 1
  fi
  [[ -s "$out.stderr" ]] && sed 's/^/  kustomize: /' "$out.stderr" >&2
  return 0
}
