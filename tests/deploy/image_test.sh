#!/usr/bin/env bash
# RuntimeImage: proves deploy/container/runtime-packages.txt without a container engine. It
# builds the image's runtime root filesystem from Debian 12 packages (mmdebstrap, variant
# minbase as debian:12-slim, plus exactly the listed packages and the Containerfile's user),
# copies the built walshiftd and walshiftctl in, and runs them in it the way the Kubernetes base
# runs the pod: the root filesystem read-only, as the manifests' uid/gid, the rendered
# ConfigMap's walshift.yaml and the Secret files at their mount paths, a tmpfs at TMPDIR (the
# emptyDir), in a network namespace of its own. There: no library is missing (ldd), walshiftd
# and walshiftctl start, `walshiftd --validate` and `--check` pass against two throwaway
# PostgreSQL clusters loaded with deploy/examples/orders, and a short pipeline runs: the probes
# answer without the token and /metrics only with it, a transaction larger than the source's
# logical_decoding_work_mem is spooled to TMPDIR while it runs, the new schema ends equal to the
# mapped legacy rows, the target stopped for 40 s leaves /healthz at 200 (the liveness probe)
# while /readyz answers 503, `walshiftctl status` reports the caught-up pipeline healthy, and
# SIGTERM stops walshiftd with exit 0 within the pod's terminationGracePeriodSeconds.
#
#   tests/deploy/image_test.sh SOURCE_DIR BUILD_DIR BIN_DIR
#
# The root filesystem is cached in BUILD_DIR/deploy-cache/rootfs-<hash of the package list>/.
# Exit 0 passed, 1 failed, 77 skipped: not root, or the Debian mirror or the npm registry
# cannot be reached.
set -euo pipefail

name=RuntimeImage
fail() { echo "FAIL $name: $*" >&2; exit 1; }
skip() { echo "$name: SKIPPED: $*"; exit 77; }

# ---- inside the namespaces (the script runs itself under unshare) ----
if [[ "${1:-}" == --inside ]]; then
  shift
  src="$1" bin="$2" rootfs="$3" work="$4"
  # shellcheck disable=SC1091
  source "$work/out/base/facts.sh"
  root="$work/root"
  walshiftd_pid=""
  # shellcheck source=tools/lib/pgcluster.sh
  source "$src/tools/lib/pgcluster.sh"
  cleanup() {
    if [[ -n "$walshiftd_pid" ]]; then kill -KILL "$walshiftd_pid" 2>/dev/null || true; fi
    pgcluster_stop "$work/legacy" immediate >/dev/null 2>&1 || true
    pgcluster_stop "$work/new" immediate >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  log_tail() { [[ -s "$work/walshiftd.log" ]] && tail -n 20 "$work/walshiftd.log" | sed 's/^/  walshiftd: /' >&2; }
  trap 'echo "FAIL $name: line $LINENO: $BASH_COMMAND" >&2; log_tail' ERR

  ip link set lo up

  # The databases: the orders example's legacy and new schemas. The source streams every
  # transaction past 64 kB to walshiftd while it runs.
  chmod 755 "$work"
  pgcluster_start "$work/legacy" "logical_decoding_work_mem = 64kB" >/dev/null
  pgcluster_start "$work/new" >/dev/null
  pgbin="$(_pgcluster_bindir)"
  psql_q() { "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
  psql_q "$(pgcluster_dsn "$work/legacy" postgres)" -c "CREATE DATABASE shop"
  psql_q "$(pgcluster_dsn "$work/new" postgres)" -c "CREATE DATABASE shop_v2"
  legacy="$(pgcluster_dsn "$work/legacy" shop)"
  new="$(pgcluster_dsn "$work/new" shop_v2)"
  psql_q "$legacy" -f "$src/deploy/examples/orders/legacy.sql"
  psql_q "$new" -f "$src/deploy/examples/orders/new.sql"
  psql_q "$legacy" -c "INSERT INTO customers (email, full_name) SELECT 'Old' || g || '@Example.com', 'Old ' || g FROM generate_series(1, 100) g"

  # The pod's root filesystem: the cached one under an overlay (the image), the binaries where
  # the Containerfile copies them, the mount points the runtime makes; then read-only.
  mkdir -p "$work/upper" "$work/overlay-work" "$root"
  mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/overlay-work" "$root"
  install -m 0755 "$bin/walshiftd" "$bin/walshiftctl" "$root/usr/local/bin/"
  mkdir -p "$root$CONFIG_MOUNT" "$root$TMPDIR_PATH"
  for m in "${SECRET_MOUNTS[@]}"; do mkdir -p "$root$m"; done
  mount -o remount,ro "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  # The volumes: the ConfigMap and the Secrets read-only (secret files root:fsGroup, their
  # defaultMode), the emptyDir writable by everyone.
  ro_bind() { mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"; }
  mkdir -p "$work/vol/config"
  cp "$work/out/base/walshift.yaml" "$work/vol/config/$(basename "$CONFIG_PATH")"
  chmod 0644 "$work/vol/config/"*
  ro_bind "$work/vol/config" "$root$CONFIG_MOUNT"
  token="token-$RANDOM$RANDOM$RANDOM"
  for i in "${!SECRET_FILES[@]}"; do
    f="${SECRET_FILES[$i]}"
    mkdir -p "$work/vol$(dirname "$f")"
    case "${SECRET_ROLES[$i]}" in
      source) echo "$legacy" >"$work/vol$f" ;;
      target:*) echo "$new" >"$work/vol$f" ;;
      token) echo "$token" >"$work/vol$f"; token_file="$f" ;;
    esac
    chown "0:${FS_GROUP:-0}" "$work/vol$f"
    chmod "${SECRET_MODES[$i]}" "$work/vol$f"
  done
  for m in "${SECRET_MOUNTS[@]}"; do ro_bind "$work/vol$m" "$root$m"; done
  mount -t tmpfs -o mode=1777,size=256m tmpfs "$root$TMPDIR_PATH"

  # A process of the pod: chroot, the manifests' uid, gid and fsGroup, the container's env.
  # exec_pod in a subshell: "( exec_pod walshiftd ... ) &" makes $! walshiftd's own pid.
  exec_pod() {
    exec chroot --userspec="$RUN_AS_USER:$RUN_AS_GROUP" --groups="${FS_GROUP:-$RUN_AS_GROUP}" "$root" \
      /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/nonexistent TMPDIR="$TMPDIR_PATH" "$@"
  }
  pod() { ( exec_pod "$@" ); }
  if pod /bin/sh -c 'echo x >/usr/local/bin/probe' 2>/dev/null; then fail "the root filesystem is writable"; fi
  pod /usr/bin/id | sed 's/^/  pod: /'

  for b in walshiftd walshiftctl; do
    out="$(pod /usr/bin/ldd "/usr/local/bin/$b")"
    if grep -q 'not found' <<<"$out"; then
      grep 'not found' <<<"$out" >&2
      fail "$b misses libraries in the runtime root filesystem: add their packages to deploy/container/runtime-packages.txt"
    fi
    echo "  $b: $(grep -c '=>' <<<"$out") libraries, all found"
  done
  out="$(pod /usr/local/bin/walshiftd --version 2>&1)" || fail "walshiftd --version failed: $out"
  echo "  $out"
  out="$(pod /usr/local/bin/walshiftctl --version 2>&1)" || fail "walshiftctl --version failed: $out"
  echo "  $out"
  pod /usr/local/bin/walshiftctl --help >/dev/null
  echo "  walshiftctl --help: exit 0"

  pod /usr/local/bin/walshiftd --config "$CONFIG_PATH" --validate | sed 's/^/  /'
  pod /usr/local/bin/walshiftd --config "$CONFIG_PATH" --check | sed 's/^/  /'

  # The pipeline.
  # http PATH [TOKEN]: the status code of GET PATH on the status port.
  http() {
    (
      auth=""
      [[ -n "${2:-}" ]] && auth="Authorization: Bearer $2"$'\r\n'
      exec 3<>"/dev/tcp/127.0.0.1/$STATUS_PORT" || exit 0
      printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n%s\r\n' "$1" "$auth" >&3
      head -1 <&3 | cut -d' ' -f2
    ) 2>/dev/null | grep -E '^[0-9]{3}' || echo 000
  }
  wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
      kill -0 "$walshiftd_pid" 2>/dev/null || fail "walshiftd exited"
      [[ $SECONDS -lt $deadline ]] || fail "timed out waiting for: $*"
      sleep 0.2
    done
  }
  ( exec_pod /usr/local/bin/walshiftd --config "$CONFIG_PATH" ) >"$work/walshiftd.log" 2>&1 &
  walshiftd_pid=$!
  ready() { [[ "$(http /readyz)" == 200 ]]; }
  wait_for 60 ready
  echo "  /readyz 200 (no token), /healthz $(http /healthz) (no token)"
  [[ "$(http /healthz)" == 200 ]] || fail "/healthz does not answer 200"
  [[ "$(http /metrics)" == 401 ]] || fail "/metrics answers $(http /metrics) without the token, expected 401"
  [[ "$(http /metrics "$token")" == 200 ]] || fail "/metrics does not answer 200 with the token"
  [[ "$(http /status "$token")" == 200 ]] || fail "/status does not answer 200 with the token"
  echo "  /metrics and /status: 401 without the token, 200 with it"

  # One transaction larger than logical_decoding_work_mem, kept open for a few seconds: the
  # walsender streams it while it runs, and walshiftd spools it under TMPDIR.
  psql_q "$legacy" >"$work/big.log" 2>&1 <<'SQL' &
BEGIN;
INSERT INTO customers (email, full_name) SELECT 'User' || g || '@Example.com', 'Customer ' || g FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, amount, status, note)
SELECT 1 + g % 1000, (g % 997) + 0.99, (ARRAY['new','paid','shipped']::order_status[])[1 + g % 3], repeat('n', g % 200)
FROM generate_series(1, 20000) g;
SELECT pg_sleep(5);
COMMIT;
SQL
  big_pid=$!
  spooled() { compgen -G "$root$TMPDIR_PATH/walshift-stream-*" >/dev/null; }
  wait_for 20 spooled
  echo "  a running transaction is spooled in the emptyDir: $(cd "$root$TMPDIR_PATH" && echo walshift-stream-*)"
  wait "$big_pid" || { cat "$work/big.log" >&2; fail "the big transaction failed"; }
  psql_q "$legacy" -c "UPDATE orders SET status = 'shipped' WHERE id % 7 = 0" \
                   -c "DELETE FROM orders WHERE id % 11 = 0" -c "UPDATE customers SET email = upper(email) WHERE id % 5 = 0"
  expected() { psql_q "$legacy" -At -f "$src/deploy/examples/orders/expected.sql"; }
  actual() { psql_q "$new" -At -f "$src/deploy/examples/orders/check.sql"; }
  same() { [[ "$(expected | sha256sum)" == "$(actual | sha256sum)" ]]; }
  wait_for 90 same
  echo "  the new schema equals the mapped legacy rows: $(actual | wc -l) rows"

  # The target database down for longer than /healthz's 30 s: the liveness probe's endpoint
  # stays 200 throughout (walshiftd reconnects, which is its job), readiness goes 503.
  pgcluster_stop "$work/new" fast
  psql_q "$legacy" -c "INSERT INTO orders (customer_id, amount) SELECT g, g FROM generate_series(1, 100) g"
  down_start=$SECONDS
  saw_unready=0
  while [[ $((SECONDS - down_start)) -lt 40 ]]; do
    kill -0 "$walshiftd_pid" 2>/dev/null || fail "walshiftd exited while the target was down"
    code="$(http /healthz)"
    [[ "$code" == 200 ]] || fail "/healthz answered $code after $((SECONDS - down_start)) s with the target down"
    [[ "$(http /readyz)" == 503 ]] && saw_unready=1
    sleep 1
  done
  [[ $saw_unready -eq 1 ]] || fail "/readyz never answered 503 while the target was down"
  echo "  target down for $((SECONDS - down_start)) s: /healthz 200 throughout, /readyz 503"
  pgcluster_start "$work/new" >/dev/null
  wait_for 60 ready
  wait_for 90 same
  echo "  target back: /readyz 200, the new schema equal again"
  pod /usr/local/bin/walshiftctl status --url "http://127.0.0.1:$STATUS_PORT" --token-file "$token_file" | sed 's/^/  | /'
  pod /usr/local/bin/walshiftctl status --config "$CONFIG_PATH" >/dev/null
  echo "  walshiftctl status (--url with --token-file, and --config): exit 0"

  stop_start=$SECONDS
  kill -TERM "$walshiftd_pid"
  code=0
  wait "$walshiftd_pid" || code=$?
  walshiftd_pid=""
  took=$((SECONDS - stop_start))
  [[ $code -eq 0 ]] || { log_tail; fail "walshiftd exited $code on SIGTERM"; }
  [[ $took -lt $GRACE_SECONDS ]] || fail "walshiftd took $took s to stop; the pod's grace period is $GRACE_SECONDS s"
  if spooled; then fail "spool files left in TMPDIR after a clean stop"; fi
  echo "  SIGTERM: exit 0 after ${took} s (grace period ${GRACE_SECONDS} s)"
  exit 0
fi

# ---- outside ----
src="${1:?usage: image_test.sh SOURCE_DIR BUILD_DIR BIN_DIR}"
build="${2:?}"
bin="${3:?}"
here="$src/tests/deploy"
[[ "$(id -u)" -eq 0 ]] || skip "needs root (mmdebstrap's root mode, chroot, mounts, a network namespace)"
command -v mmdebstrap >/dev/null 2>&1 || fail "mmdebstrap is not installed (tools/setup installs it)"
command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || fail "unshare and ip are needed (util-linux, iproute2)"
for b in walshiftd walshiftctl; do [[ -x "$bin/$b" ]] || fail "$bin/$b is not built"; done

# The pod as the Kubernetes base describes it (paths, port, uid, grace period).
# shellcheck source=tests/deploy/tooling.sh
source "$here/tooling.sh"
status=0
deploy_tooling "$build/deploy-cache" || status=$?
[[ $status -eq 0 ]] || exit "$status"
work="$(mktemp -d "${TMPDIR:-/tmp}/walshift-image-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT
deploy_render "$src/deploy/kubernetes/base" "$work/base.yaml"
DEPLOY_NODE_MODULES="$DEPLOY_NODE_MODULES" node "$here/manifests.mjs" --out "$work/out" base="$work/base.yaml" >/dev/null
# shellcheck disable=SC1091
source "$work/out/base/facts.sh"

# The Containerfile and the manifests agree on the user, the entrypoint, TMPDIR and the list.
containerfile="$src/deploy/container/Containerfile"
grep -q "^USER $RUN_AS_USER:$RUN_AS_GROUP\$" "$containerfile" || fail "the Containerfile's USER is not $RUN_AS_USER:$RUN_AS_GROUP (the manifests' runAsUser:runAsGroup)"
grep -q -- "--uid $RUN_AS_USER " "$containerfile" && grep -q -- "--gid $RUN_AS_GROUP" "$containerfile" || fail "the Containerfile's user is not uid $RUN_AS_USER gid $RUN_AS_GROUP"
grep -q '^ENTRYPOINT \["/usr/local/bin/walshiftd"\]' "$containerfile" || fail "the Containerfile's ENTRYPOINT is not /usr/local/bin/walshiftd"
grep -q "^ENV TMPDIR=$TMPDIR_PATH\$" "$containerfile" || fail "the Containerfile's TMPDIR is not the manifests' $TMPDIR_PATH"
grep -q 'deploy/container/runtime-packages.txt' "$containerfile" || fail "the Containerfile does not read deploy/container/runtime-packages.txt"

# The runtime root filesystem, built once per package list.
mapfile -t packages < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' "$src/deploy/container/runtime-packages.txt")
[[ ${#packages[@]} -gt 0 ]] || fail "deploy/container/runtime-packages.txt lists no package"
cache="$build/deploy-cache"
key="$(printf '%s\n' bookworm minbase "$RUN_AS_USER:$RUN_AS_GROUP" "${packages[@]}" | sha256sum | cut -c1-16)"
rootfs="$cache/rootfs-$key"
if [[ ! -f "$rootfs.complete" ]]; then
  for old in "$cache"/rootfs-*; do [[ -e "$old" ]] && rm -rf "$old"; done
  tmp="$rootfs.partial"
  started=$SECONDS
  echo "building the runtime root filesystem (mmdebstrap bookworm minbase + ${packages[*]})"
  if ! mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
       --customize-hook="chroot \"\$1\" groupadd --system --gid $RUN_AS_GROUP walshift" \
       --customize-hook="chroot \"\$1\" useradd --system --uid $RUN_AS_USER --gid $RUN_AS_GROUP --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin walshift" \
       --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
       bookworm "$tmp" >"$cache/mmdebstrap.log" 2>&1; then
    rm -rf "$tmp"
    if grep -qE 'Unable to locate package|has no installation candidate|unmet dependencies|Unable to correct problems' "$cache/mmdebstrap.log"; then
      tail -n 30 "$cache/mmdebstrap.log" >&2
      fail "a package of deploy/container/runtime-packages.txt cannot be installed"
    fi
    if grep -qiE 'Could not resolve|Temporary failure resolving|Failed to fetch|Unable to connect|Connection (failed|refused|timed out)|Network is unreachable' "$cache/mmdebstrap.log"; then
      tail -n 5 "$cache/mmdebstrap.log" | sed 's/^/  mmdebstrap: /'
      skip "mmdebstrap cannot reach the Debian mirror"
    fi
    tail -n 30 "$cache/mmdebstrap.log" >&2
    fail "mmdebstrap failed (log: $cache/mmdebstrap.log)"
  fi
  mv "$tmp" "$rootfs"
  touch "$rootfs.complete"
  echo "built it in $((SECONDS - started)) s: $(du -sh "$rootfs" | cut -f1) in $rootfs"
else
  echo "runtime root filesystem: $rootfs (cached)"
fi

unshare --mount --net --propagation private -- bash "$0" --inside "$src" "$bin" "$rootfs" "$work"
echo "$name: passed"
