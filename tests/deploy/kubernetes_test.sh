#!/usr/bin/env bash
# KubernetesManifests: deploy/kubernetes (the base and overlays/ha) rendered with Debian's
# kubectl kustomize offline, every object validated against the Kubernetes and
# prometheus-operator JSON schemas (unknown fields are errors), the objects checked against the
# ConfigMap's walshift.yaml (ports, probe paths, secret files, TMPDIR, security context, HA),
# and each rendered walshift.yaml accepted by `walshiftd --validate`.
#
#   tests/deploy/kubernetes_test.sh SOURCE_DIR BUILD_DIR BIN_DIR
#
# Exit 0 passed, 1 failed, 77 skipped (only when the npm registry cannot be reached).
set -euo pipefail

src="${1:?usage: kubernetes_test.sh SOURCE_DIR BUILD_DIR BIN_DIR}"
build="${2:?}"
bin="${3:?}"
here="$src/tests/deploy"
[[ -x "$bin/walshiftd" ]] || { echo "FAIL KubernetesManifests: $bin/walshiftd is not built" >&2; exit 1; }
# shellcheck source=tests/deploy/tooling.sh
source "$here/tooling.sh"

status=0
deploy_tooling "$build/deploy-cache" || status=$?
[[ $status -eq 0 ]] || exit "$status"
echo "kubectl: $KUBECTL ($("$KUBECTL" version --client --short 2>/dev/null || "$KUBECTL" version --client | head -1))"

work="$(mktemp -d "${TMPDIR:-/tmp}/walshift-k8s-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Rendering and validation (also walshiftd --validate) need no network: where a network namespace
# can be made (root), they run in one that has none.
offline=()
if unshare --net true 2>/dev/null; then
  offline=(unshare --net --)
  echo "offline: rendering and validating in a network namespace without network"
fi
export KUBECTL DEPLOY_NODE_MODULES
"${offline[@]}" bash -c 'source "$1/tooling.sh" && deploy_render "$2/deploy/kubernetes/base" "$3/base.yaml" &&
  deploy_render "$2/deploy/kubernetes/overlays/ha" "$3/ha.yaml"' render "$here" "$src" "$work"
"${offline[@]}" node "$here/manifests.mjs" --self-test --out "$work/out" base="$work/base.yaml" ha="$work/ha.yaml"

# walshiftd --validate on each rendered walshift.yaml. It reads the secret files, which live at
# the pod's paths: here they are made under a directory of the test, with the same names, and
# the config's paths point there (nothing else in it changes).
for name in base ha; do
  # shellcheck disable=SC1090
  source "$work/out/$name/facts.sh"
  root="$work/pod-$name"
  config="$(cat "$work/out/$name/walshift.yaml")"
  for i in "${!SECRET_FILES[@]}"; do
    f="${SECRET_FILES[$i]}"
    mkdir -p "$root$(dirname "$f")"
    case "${SECRET_ROLES[$i]}" in
      token) echo "a-status-token" >"$root$f" ;;
      *) echo "host=db.example dbname=app user=walshift" >"$root$f" ;;
    esac
    config="${config//"$f"/"$root$f"}"
  done
  printf '%s\n' "$config" >"$work/$name-validate.yaml"
  if out="$("${offline[@]}" "$bin/walshiftd" --config "$work/$name-validate.yaml" --validate 2>&1)"; then
    echo "$name: walshiftd --validate: $out"
  else
    echo "$out" >&2
    # A walshiftd without active/standby rejects the ha: block: the same file without it must
    # then pass, and that is said loudly (the overlay is written for the walshiftd that has it).
    awk '/^ha:/ { skip = 1; next } skip && /^[[:space:]]/ { next } { skip = 0; print }' \
      "$work/$name-validate.yaml" >"$work/$name-without-ha.yaml"
    if [[ "$name" == ha ]] && grep -q '\bha\b' <<<"$out" &&
       "${offline[@]}" "$bin/walshiftd" --config "$work/$name-without-ha.yaml" --validate >/dev/null 2>&1; then
      echo "NOTE: this walshiftd does not know ha: yet; the HA overlay's config is valid without it"
    else
      echo "FAIL $name: walshiftd --validate rejects the rendered walshift.yaml" >&2
      exit 1
    fi
  fi
done
echo "KubernetesManifests: passed"
