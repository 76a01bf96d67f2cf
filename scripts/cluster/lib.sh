# shellcheck shell=bash
# Shared helpers for scripts/cluster/{build,up,down,env}. Source, do not execute.
# shellcheck disable=SC2034 # the variables are used by the sourcing scripts

CLUSTER_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_SCRIPTS_DIR/../.." && pwd)
# shellcheck source=versions.env
source "$CLUSTER_SCRIPTS_DIR/versions.env"

FRAUDMODEL_CACHE=${FRAUDMODEL_CACHE:-$HOME/.cache/fraudmodel-operator}
# One directory per Kubernetes version; the other components are version-checked
# binary by binary, so bumping e.g. helm rebuilds helm only.
K8S_DIR="$FRAUDMODEL_CACHE/k8s/$FRAUDMODEL_KUBE_VERSION"
BIN_DIR="$K8S_DIR/bin"
LOG_DIR="$K8S_DIR/logs"
CLUSTERS_DIR="$FRAUDMODEL_CACHE/clusters"

# Every binary the tier needs, in build order.
ALL_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd
  kwok kwokctl metrics-server helm kubeconform)
# The real node's binaries (scripts/cluster/build --node, up --real-node); the CNI
# plugins go to $BIN_DIR/cni, the directory containerd is given.
NODE_BINARIES=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr coredns)
CNI_PLUGINS=(bridge host-local loopback portmap)
CNI_BIN_DIR="$BIN_DIR/cni"

_t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - _t0))s"; }
log() { printf '[cluster %5s] %s\n' "$(elapsed)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# The version a binary must report.
want_version() {
  case $1 in
  kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) echo "$FRAUDMODEL_KUBE_VERSION" ;;
  etcd) echo "$FRAUDMODEL_ETCD_VERSION" ;;
  kwok | kwokctl) echo "$FRAUDMODEL_KWOK_VERSION" ;;
  metrics-server) echo "$FRAUDMODEL_METRICS_SERVER_VERSION" ;;
  helm) echo "$FRAUDMODEL_HELM_VERSION" ;;
  kubeconform) echo "$FRAUDMODEL_KUBECONFORM_VERSION" ;;
  kubelet | kube-proxy) echo "$FRAUDMODEL_KUBE_VERSION" ;;
  containerd | containerd-shim-runc-v2 | ctr) echo "$FRAUDMODEL_CONTAINERD_VERSION" ;;
  coredns) echo "$FRAUDMODEL_COREDNS_VERSION" ;;
  *) die "unknown binary $1" ;;
  esac
}

# What a binary says about its version (first lines of output).
probe_version() {
  local name=$1 path=$2
  case $name in
  kubectl) timeout 10 "$path" version --client 2>&1 | head -3 ;;
  helm) timeout 10 "$path" version --short 2>&1 | head -3 ;;
  kubeconform) timeout 10 "$path" -v 2>&1 | head -3 ;;
  containerd-shim-runc-v2) timeout 10 "$path" -v 2>&1 | head -3 ;;
  coredns) timeout 10 "$path" -version 2>&1 | head -3 ;;
  *) timeout 10 "$path" --version 2>&1 | head -3 ;;
  esac
}

# True when the executable at $2 reports the pinned version of binary $1.
version_matches() {
  local name=$1 path=$2 want out
  [[ -x $path && ! -d $path ]] || return 1
  want=$(want_version "$name")
  want=${want#v}
  out=$(probe_version "$name" "$path") || true
  grep -Eq "(^|[^0-9A-Za-z.])v?${want//./\\.}([^0-9A-Za-z.]|$)" <<<"$out"
}

# Path of a usable binary: the cache, then $FRAUDMODEL_K8S_BIN_DIR, then PATH.
find_binary() {
  local name=$1 candidate
  local candidates=("$BIN_DIR/$name")
  [[ -n ${FRAUDMODEL_K8S_BIN_DIR:-} ]] && candidates+=("$FRAUDMODEL_K8S_BIN_DIR/$name")
  candidate=$(PATH=$(_path_without_bin_dir) command -v "$name" 2>/dev/null) && candidates+=("$candidate")
  for candidate in "${candidates[@]}"; do
    if version_matches "$name" "$candidate"; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

_path_without_bin_dir() {
  local out="" entry
  local IFS=:
  for entry in $PATH; do
    [[ $entry == "$BIN_DIR" ]] && continue
    out+="${out:+:}$entry"
  done
  echo "$out"
}

# kwokctl keeps its clusters, certificates and logs under KWOK_WORKDIR: isolate
# ours from a user's ~/.kwok.
export KWOK_WORKDIR="$FRAUDMODEL_CACHE/kwok"

cluster_state_dir() { echo "$CLUSTERS_DIR/$1"; }
