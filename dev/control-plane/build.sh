#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, KEDA's operator and metrics server,
# KServe's controller, the OpenTelemetry operator, Prometheus, promtool and
# prometheus-operator) from
# upstream Go modules at pinned versions, and extracts the pinned third-party
# CRDs from their projects' own modules.
#
# Nothing can be downloaded from release pages on our machines, so every
# binary is compiled through the Go module proxy. Outputs go to a cache
# outside the repository; a component is rebuilt only when its pin changes.
#
# Usage: dev/control-plane/build.sh            # build what is missing
#        dev/control-plane/build.sh keda       # one component (etcd, kwok, kubernetes, keda,
#                                              # kserve, otel-operator, helm, prometheus,
#                                              # prometheus-operator, crds)
#        AIM_CACHE_DIR=/some/dir dev/control-plane/build.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${AIM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aim}"
bin="$cache/bin"
crds="$cache/crds"
work="$cache/build"
mkdir -p "$bin" "$crds" "$work"

log() { printf '[aim build] %s\n' "$*" >&2; }
die() { printf '[aim build] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 ||
    die "no Go toolchain on PATH. Install Go >= 1.24 (e.g. apt-get install golang-go, or put /usr/local/go/bin on PATH) and run again."
go version >/dev/null 2>&1 || die "'go version' fails: the Go toolchain is broken. Reinstall Go and run again."

# Fail fast rather than fetching a toolchain through the proxy.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# A stamp file per component records the pin it was built from.
stamp_ok() { [[ -f "$cache/stamps/$1" && "$(cat "$cache/stamps/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$cache/stamps"; printf '%s' "$2" >"$cache/stamps/$1"; }

build_kubernetes() {
    local v="$KUBE_VERSION" minor staging_v dir modfile
    if stamp_ok kubernetes "$v" && [[ -x "$bin/kube-apiserver" && -x "$bin/kubectl" ]]; then
        log "kubernetes $v: cached"; return
    fi
    log "kubernetes $v: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (tens of minutes cold)"
    staging_v="v0.${v#v1.}"
    dir="$work/kubernetes-$v"
    rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch k8s.io/kubernetes@$v through the Go module proxy (check GOPROXY)"
    go mod init aim.local/kubernetes-build >/dev/null 2>&1
    # GODEBUG defaults follow the main module's go line: copy upstream's so the
    # binaries behave like release builds.
    local goline godebug
    goline="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    godebug="$(sed -n 's/^godebug \(.*\)$/\1/p' "$modfile" | head -1)"
    go mod edit -go="$goline"
    [[ -n "$godebug" ]] && go mod edit -godebug="$godebug"
    # Upstream points its staging modules at ./staging; as a dependency they
    # must resolve to their published v0.Y.Z tags instead. Take the list from
    # upstream's go.mod so new staging modules are never missed.
    local m
    for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile"); do
        go mod edit -replace="$m=$m@$staging_v"
    done
    go mod edit -require="k8s.io/kubernetes@$v"
    local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
    for c in "${cmds[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$c"; done
    go mod tidy >/dev/null 2>&1 || go mod tidy
    local minor_num="${v#v1.}"; minor_num="${minor_num%%.*}"
    local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor_num"
        ld+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    for c in "${cmds[@]}"; do
        log "  go build $c"
        go build -trimpath -tags=selinux,notest -ldflags="$ld" -o "$bin/$c.new" "k8s.io/kubernetes/cmd/$c"
        mv "$bin/$c.new" "$bin/$c"
    done
    "$bin/kube-apiserver" --version | grep -q "$v" || die "kube-apiserver does not report $v"
    stamp_set kubernetes "$v"
}

build_etcd() {
    local v="$ETCD_VERSION" dir
    if stamp_ok etcd "$v" && [[ -x "$bin/etcd" ]]; then log "etcd $v: cached"; return; fi
    log "etcd $v: building"
    dir="$work/etcd-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    # A separate wrapper module keeps etcd's dependency graph from changing
    # what kube-apiserver is built with.
    go mod init aim.local/etcd-build >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$v" -tool=go.etcd.io/etcd/server/v3
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags="-s -w" -o "$bin/etcd.new" go.etcd.io/etcd/server/v3
    mv "$bin/etcd.new" "$bin/etcd"
    stamp_set etcd "$v"
}

build_kwok() {
    local v="$KWOK_VERSION"
    if stamp_ok kwok "$v" && [[ -x "$bin/kwok" ]]; then log "kwok $v: cached"; return; fi
    log "kwok $v: building"
    cd "$work"
    GOBIN="$bin" go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$v"
    stamp_set kwok "$v"
}

# KEDA's operator and metrics server (the external-metrics adapter), for the
# tier-3 autoscaling loop (`aim dev cluster up --with-keda`). Their own
# wrapper module, like etcd's, so KEDA's dependency graph never changes what
# the Kubernetes binaries are built with.
build_keda() {
    local v="$KEDA_VERSION" dir modfile
    if stamp_ok keda "$v" && [[ -x "$bin/keda-operator" && -x "$bin/keda-adapter" ]]; then
        log "keda $v: cached"; return
    fi
    log "keda $v: building the operator and the metrics server (about ten minutes cold)"
    dir="$work/keda-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "github.com/kedacore/keda/v2@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch github.com/kedacore/keda/v2@$v through the Go module proxy"
    go mod init aim.local/keda-build >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    # KEDA pins versions with replace directives; a dependency sees them only
    # if the main module repeats them.
    local r
    for r in $(awk '/^replace \(/{f=1;next} f&&/^\)/{f=0} f' "$modfile" |
        sed -n 's#^\s*\([^ ]*\)\( v[^ ]*\)\? => \([^ .][^ ]*\) \(v[^ ]*\)$#\1=\3@\4#p'); do
        go mod edit -replace="$r"
    done
    # Two of KEDA's scaler SDK versions are refused by the module proxy
    # ("not available"); their next patch releases are served. The checksum
    # database has no entry for those, hence GONOSUMDB for just these two.
    go mod edit -replace=github.com/newrelic/newrelic-client-go/v2=github.com/newrelic/newrelic-client-go/v2@v2.74.1
    go mod edit -replace=github.com/solarwinds/swo-sdk-go/swov1=github.com/solarwinds/swo-sdk-go/swov1@v0.13.1
    local -x GONOSUMDB=github.com/newrelic/newrelic-client-go,github.com/solarwinds/swo-sdk-go
    go mod edit -require="github.com/kedacore/keda/v2@$v" \
        -tool=github.com/kedacore/keda/v2/cmd/operator -tool=github.com/kedacore/keda/v2/cmd/adapter
    go mod tidy >/dev/null 2>&1 || go mod tidy
    local c
    for c in operator adapter; do
        log "  go build keda $c"
        go build -trimpath -ldflags="-s -w" -o "$bin/keda-$c.new" "github.com/kedacore/keda/v2/cmd/$c"
        mv "$bin/keda-$c.new" "$bin/keda-$c"
    done
    stamp_set keda "$v"
}

# Repeats a module's replace directives (one-line and block form) in the
# wrapper module: a dependency's replaces apply only in the main module.
copy_replaces() {
    local modfile="$1" r
    for r in $( (sed -n 's#^replace \([^ (][^ ]*\)\( v[^ ]*\)\? => \([^ .][^ ]*\) \(v[^ ]*\)$#\1=\3@\4#p' "$modfile"
        awk '/^replace \(/{f=1;next} f&&/^\)/{f=0} f' "$modfile" |
            sed -n 's#^\s*\([^ ]*\)\( v[^ ]*\)\? => \([^ .][^ ]*\) \(v[^ ]*\)$#\1=\3@\4#p')); do
        go mod edit -replace="$r"
    done
}

# KServe's controller (cmd/manager), for the tier-3 loop with real
# InferenceServices (`aim dev cluster up --with-kserve`): it turns an
# InferenceService into a Deployment, a KEDA ScaledObject and an
# OpenTelemetryCollector. Its own wrapper module, like KEDA's.
build_kserve() {
    local v="$KSERVE_VERSION" dir modfile
    if stamp_ok kserve "$v" && [[ -x "$bin/kserve-manager" ]]; then log "kserve $v: cached"; return; fi
    log "kserve $v: building the controller manager (about five minutes cold)"
    dir="$work/kserve-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "github.com/kserve/kserve@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch github.com/kserve/kserve@$v through the Go module proxy"
    go mod init aim.local/kserve-build >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    copy_replaces "$modfile"
    go mod edit -require="github.com/kserve/kserve@$v" -tool=github.com/kserve/kserve/cmd/manager
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags="-s -w" -o "$bin/kserve-manager.new" github.com/kserve/kserve/cmd/manager
    mv "$bin/kserve-manager.new" "$bin/kserve-manager"
    stamp_set kserve "$v"
}

# The OpenTelemetry operator: KServe's OpenTelemetryCollector objects go
# through its defaulting and validating webhooks, and it injects the
# sidecar into the predictor pods (which the pod runner then plays).
build_otel_operator() {
    local v="$OTEL_OPERATOR_VERSION" dir modfile
    local mod=github.com/open-telemetry/opentelemetry-operator
    if stamp_ok otel-operator "$v" && [[ -x "$bin/otel-operator" ]]; then log "otel-operator $v: cached"; return; fi
    log "otel-operator $v: building (about four minutes cold)"
    dir="$work/otel-operator-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "$mod@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch $mod@$v through the Go module proxy"
    go mod init aim.local/otel-operator-build >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    copy_replaces "$modfile"
    go mod edit -require="$mod@$v" -tool="$mod"
    go mod tidy >/dev/null 2>&1 || go mod tidy
    # As upstream's Makefile stamps it: the version, and the collector
    # version its default sidecar image is tagged with.
    local pkg="$mod/internal/version" plain="${v#v}"
    go build -trimpath -ldflags="-s -w -X $pkg.version=$plain -X $pkg.otelCol=$plain" \
        -o "$bin/otel-operator.new" "$mod"
    mv "$bin/otel-operator.new" "$bin/otel-operator"
    stamp_set otel-operator "$v"
}

# Prometheus and promtool, for `--with-prometheus` and the alert rules' unit
# tests. Upstream's release build adds the `builtinassets` tag, which embeds
# the web UI; its assets are compiled by npm and are not in the Go module, so
# this build leaves the tag out. The UI pages are then missing, while the
# HTTP API (queries, targets, rules, reload), which is all the bed and its
# tests use, is the same code.
build_prometheus() {
    local v="$PROMETHEUS_VERSION" dir modfile
    local mod=github.com/prometheus/prometheus
    # Upstream's own build tags keep only the service discovery the bed
    # uses (Kubernetes; file and static are always in): the cloud SDKs of
    # the other mechanisms are most of the cold build time.
    local tags="netgo,remove_all_sd,enable_kubernetes_sd"
    if stamp_ok prometheus "$v $tags" && [[ -x "$bin/prometheus" && -x "$bin/promtool" ]]; then
        log "prometheus $v: cached"; return
    fi
    log "prometheus $v: building prometheus and promtool (about ten minutes cold)"
    dir="$work/prometheus-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "$mod@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch $mod@$v through the Go module proxy"
    go mod init aim.local/prometheus-build >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    copy_replaces "$modfile"
    go mod edit -require="$mod@$v" -tool="$mod/cmd/prometheus" -tool="$mod/cmd/promtool"
    go mod tidy >/dev/null 2>&1 || go mod tidy
    # The module version v0.3XX.Y is release 3.XX.Y; stamp that, as
    # upstream's promu does, so `prometheus --version` and the build_info
    # metric name the release.
    local release minor patch
    minor="${v#v0.3}"; patch="${minor#*.}"; minor="${minor%%.*}"
    release="3.$((10#$minor)).$patch"
    local pkg=github.com/prometheus/common/version
    local ld="-s -w -X $pkg.Version=$release -X $pkg.Branch=HEAD -X $pkg.BuildUser=aim-build"
    ld+=" -X $pkg.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
    local c
    for c in prometheus promtool; do
        log "  go build $c"
        go build -trimpath -tags="$tags" -ldflags="$ld" -o "$bin/$c.new" "$mod/cmd/$c"
        mv "$bin/$c.new" "$bin/$c"
    done
    "$bin/prometheus" --version 2>&1 | grep -q "version $release" ||
        die "the prometheus just built does not report version $release"
    stamp_set prometheus "$v $tags"
}

# prometheus-operator's operator (cmd/operator): ServiceMonitors, PodMonitors
# and PrometheusRules become a Prometheus configuration, as in a cluster
# that runs the operator (`--with-prometheus`).
build_prometheus_operator() {
    local v="$PROMETHEUS_OPERATOR_VERSION" dir modfile
    local mod=github.com/prometheus-operator/prometheus-operator
    if stamp_ok prometheus-operator "$v" && [[ -x "$bin/prometheus-operator" ]]; then
        log "prometheus-operator $v: cached"; return
    fi
    log "prometheus-operator $v: building the operator (a few minutes cold)"
    dir="$work/prometheus-operator-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    modfile="$(go mod download -json "$mod@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$modfile" ]] || die "could not fetch $mod@$v through the Go module proxy"
    go mod init aim.local/prometheus-operator-build >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$modfile" | head -1)"
    # Upstream points its API and client submodules at ./pkg/...; as a
    # dependency they resolve to their own tags, released with the same
    # version.
    local m
    for m in $(sed -n "s#^\s*\($mod/[a-z0-9/]*\) => ./.*#\1#p" "$modfile"); do
        go mod edit -replace="$m=$m@$v"
    done
    go mod edit -require="$mod@$v" -tool="$mod/cmd/operator"
    go mod tidy >/dev/null 2>&1 || go mod tidy
    local pkg=github.com/prometheus/common/version
    go build -trimpath \
        -ldflags="-s -w -X $pkg.Version=${v#v} -X $pkg.Branch=HEAD -X $pkg.BuildUser=aim-build" \
        -o "$bin/prometheus-operator.new" "$mod/cmd/operator"
    mv "$bin/prometheus-operator.new" "$bin/prometheus-operator"
    stamp_set prometheus-operator "$v"
}

# helm, to render and install deploy/chart in the tests exactly as users do.
build_helm() {
    local v="$HELM_VERSION" dir
    if stamp_ok helm "$v" && [[ -x "$bin/helm" ]]; then log "helm $v: cached"; return; fi
    log "helm $v: building"
    dir="$work/helm-$v"; rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    go mod init aim.local/helm-build >/dev/null 2>&1
    go mod edit -require="helm.sh/helm/v3@$v" -tool=helm.sh/helm/v3/cmd/helm
    go mod tidy >/dev/null 2>&1 || go mod tidy
    go build -trimpath -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$v" -o "$bin/helm.new" helm.sh/helm/v3/cmd/helm
    mv "$bin/helm.new" "$bin/helm"
    "$bin/helm" version --short >/dev/null || die "the helm just built does not run"
    stamp_set helm "$v"
}

# Copies the CRD files shipped inside a module's source to $crds/<name>/.
# Arguments: name module version then paths (files or dirs) inside the module.
extract_crds() { extract_into "$crds" crds "$@"; }
# Other upstream manifests (webhook registrations, config maps) the bed
# adapts, in $cache/manifests/<name>/.
extract_manifests() { extract_into "$cache/manifests" manifests "$@"; }

extract_into() {
    local crds="$1" kind="$2" name="$3" mod="$4" v="$5"; shift 5
    local key="$mod@$v $*"
    mkdir -p "$crds"
    if stamp_ok "$kind-$name" "$key" && [[ -d "$crds/$name" ]]; then log "$kind $name: cached"; return; fi
    log "$kind $name: from $mod@$v"
    local dir
    dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$mod@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [[ -d "$dir" ]] || die "could not fetch $mod@$v through the Go module proxy"
    rm -rf "$crds/$name.new"; mkdir -p "$crds/$name.new"
    local p
    for p in "$@"; do
        [[ -e "$dir/$p" ]] || die "$mod@$v has no $p; the pin or the path in versions.env is wrong"
        if [[ -d "$dir/$p" ]]; then cp "$dir/$p"/*.yaml "$crds/$name.new/"; else cp "$dir/$p" "$crds/$name.new/"; fi
    done
    chmod -R u+w "$crds/$name.new"
    rm -rf "$crds/$name"; mv "$crds/$name.new" "$crds/$name"
    stamp_set "$kind-$name" "$key"
}

what="${1:-all}"
case "$what" in
    all)
        build_etcd
        build_kwok
        build_kubernetes
        build_helm
        build_keda
        build_kserve
        build_otel_operator
        build_prometheus
        build_prometheus_operator
        extract_crds kserve github.com/kserve/kserve "$KSERVE_VERSION" $KSERVE_CRD_PATHS
        extract_crds gateway-api sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" $GATEWAY_API_CRD_PATHS
        extract_crds keda github.com/kedacore/keda/v2 "$KEDA_VERSION" $KEDA_CRD_PATHS
        extract_crds otel-operator github.com/open-telemetry/opentelemetry-operator "$OTEL_OPERATOR_VERSION" $OTEL_OPERATOR_CRD_PATHS
        extract_crds kwok sigs.k8s.io/kwok "$KWOK_VERSION" $KWOK_CRD_PATHS
        extract_crds prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" $PROMETHEUS_OPERATOR_CRD_PATHS
        extract_manifests kserve github.com/kserve/kserve "$KSERVE_VERSION" $KSERVE_CONFIG_PATHS
        extract_manifests otel-operator github.com/open-telemetry/opentelemetry-operator "$OTEL_OPERATOR_VERSION" $OTEL_OPERATOR_CONFIG_PATHS
        extract_manifests prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" $PROMETHEUS_OPERATOR_STACK_CRD_PATHS
        ;;
    crds)
        extract_crds kserve github.com/kserve/kserve "$KSERVE_VERSION" $KSERVE_CRD_PATHS
        extract_crds gateway-api sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" $GATEWAY_API_CRD_PATHS
        extract_crds keda github.com/kedacore/keda/v2 "$KEDA_VERSION" $KEDA_CRD_PATHS
        extract_crds otel-operator github.com/open-telemetry/opentelemetry-operator "$OTEL_OPERATOR_VERSION" $OTEL_OPERATOR_CRD_PATHS
        extract_crds kwok sigs.k8s.io/kwok "$KWOK_VERSION" $KWOK_CRD_PATHS
        extract_crds prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" $PROMETHEUS_OPERATOR_CRD_PATHS
        extract_manifests kserve github.com/kserve/kserve "$KSERVE_VERSION" $KSERVE_CONFIG_PATHS
        extract_manifests otel-operator github.com/open-telemetry/opentelemetry-operator "$OTEL_OPERATOR_VERSION" $OTEL_OPERATOR_CONFIG_PATHS
        extract_manifests prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" $PROMETHEUS_OPERATOR_STACK_CRD_PATHS
        ;;
    etcd) build_etcd ;;
    kwok) build_kwok ;;
    kubernetes) build_kubernetes ;;
    keda) build_keda ;;
    kserve) build_kserve; extract_manifests kserve github.com/kserve/kserve "$KSERVE_VERSION" $KSERVE_CONFIG_PATHS ;;
    otel-operator) build_otel_operator ;;
    helm) build_helm ;;
    prometheus) build_prometheus ;;
    prometheus-operator) build_prometheus_operator ;;
    *) die "unknown target '$what' (use all, crds, etcd, kwok, kubernetes, keda, kserve, otel-operator, helm, prometheus or prometheus-operator)" ;;
esac
log "done: binaries in $bin, CRDs in $crds"
