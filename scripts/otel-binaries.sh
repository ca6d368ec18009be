#!/usr/bin/env bash
# Builds the real Jaeger v2, a custom OpenTelemetry Collector and Docker Compose, pinned,
# from their Go modules, into a cache outside the repo, and prints that directory. The
# tests that run them (tests/otelbin.py) look there. Idempotent: a binary whose recipe is
# unchanged is kept; Go's module and build caches make a rebuild after a version bump
# incremental.
#
#   scripts/otel-binaries.sh            # all three, into ~/.cache/pipecat-roark-otel/bin
#   scripts/otel-binaries.sh otelcol    # only some of: jaeger otelcol docker-compose
#   ROARK_OTEL_BIN_DIR=/opt/otel scripts/otel-binaries.sh
#
# Needs Go (Compose v5.5.1 asks for 1.26.3 or newer, Jaeger v1.76.0 for 1.24.6) and the
# Go module proxy.
set -euo pipefail

# Jaeger's Go module keeps v1 tags: v1.76.0 is Jaeger v2.13.0, the image tag that
# docker-compose.otel.yml runs (tests/test_compose.py keeps the two in step).
JAEGER_VERSION=v1.76.0
# One Collector release for every component, core and contrib. Newer contrib releases of
# the load-balancing exporter are not served by the module proxy (v0.162.0 to v0.165.1:
# "403 Forbidden: This module version is not available"), so v0.161.0 it is.
OTELCOL_VERSION=v0.161.0
# The Collector's stable (v1) modules of the same release: the confmap providers.
OTELCOL_STABLE_VERSION=v1.67.0
# Docker Compose, for `docker compose config` on docker-compose.otel.yml without a Docker
# engine (tests/test_compose.py). Debian's docker-compose 1.29 predates the Compose Spec.
COMPOSE_VERSION=v5.5.1

bin_dir=${ROARK_OTEL_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipecat-roark-otel/bin}
build_dir=$bin_dir/.build
mkdir -p "$build_dir"
bin_dir=$(cd "$bin_dir" && pwd)
build_dir=$bin_dir/.build

command -v go >/dev/null || {
    echo "otel-binaries: Go is not installed (https://go.dev/doc/install)" >&2
    exit 1
}

# The build is CPU-heavy: be kind to whatever else the machine runs.
run() { nice -n 10 "$@"; }
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"

# A binary is current when its stamp holds the recipe it was built from.
current() { [[ -x $bin_dir/$1 && -f $bin_dir/$1.stamp && $(cat "$bin_dir/$1.stamp") == "$2" ]]; }
install_bin() { # name built-binary recipe
    mv -f "$2" "$bin_dir/$1.tmp" && mv -f "$bin_dir/$1.tmp" "$bin_dir/$1"
    printf '%s' "$3" >"$bin_dir/$1.stamp"
}

jaeger_gomod() {
    cat <<EOF
module local.invalid/pipecat-roark-otel/jaeger

go 1.24.6

// As in Jaeger's own go.mod, whose replace directives a dependent module does not inherit.
replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0
EOF
}

compose_gomod() {
    printf 'module local.invalid/pipecat-roark-otel/compose\n\ngo 1.26.3\n'
}

otelcol_manifest() {
    local core=go.opentelemetry.io/collector
    local contrib=github.com/open-telemetry/opentelemetry-collector-contrib
    cat <<EOF
dist:
  module: local.invalid/pipecat-roark-otel/otelcol
  name: otelcol
  description: OpenTelemetry Collector for the pipecat-roark-otel tests and deployments
  version: ${OTELCOL_VERSION#v}-pipecat-roark-otel
  output_path: $build_dir/otelcol
receivers:
  - gomod: $core/receiver/otlpreceiver $OTELCOL_VERSION
processors:
  - gomod: $core/processor/batchprocessor $OTELCOL_VERSION
  - gomod: $core/processor/memorylimiterprocessor $OTELCOL_VERSION
exporters:
  - gomod: $core/exporter/otlpexporter $OTELCOL_VERSION
  - gomod: $core/exporter/otlphttpexporter $OTELCOL_VERSION
  - gomod: $core/exporter/debugexporter $OTELCOL_VERSION
  - gomod: $contrib/exporter/loadbalancingexporter $OTELCOL_VERSION
extensions:
  - gomod: $contrib/extension/storage/filestorage $OTELCOL_VERSION
  - gomod: $contrib/extension/healthcheckextension $OTELCOL_VERSION
providers:
  - gomod: $core/confmap/provider/envprovider $OTELCOL_STABLE_VERSION
  - gomod: $core/confmap/provider/fileprovider $OTELCOL_STABLE_VERSION
  - gomod: $core/confmap/provider/yamlprovider $OTELCOL_STABLE_VERSION
replaces:
  # The load-balancing exporter's Cloud Map resolver asks for v1.48.0, which the module
  # proxy refuses ("403 Forbidden: This module version is not available"); v1.40.2 is
  # served and has the same API.
  - github.com/aws/aws-sdk-go-v2/service/servicediscovery => github.com/aws/aws-sdk-go-v2/service/servicediscovery v1.40.2
EOF
}

# `go install pkg@version` refuses a module whose go.mod has replace (Jaeger) or exclude
# (Compose) directives; a module that requires it as a tool builds it with the same
# dependency versions.
build_as_tool() { # name go.mod package version
    local recipe
    recipe="$1 $4 $(go env GOVERSION)"
    current "$1" "$recipe" && return
    echo "otel-binaries: building $1 $4" >&2
    local dir=$build_dir/$1
    rm -rf "$dir" && mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir/go.mod"
    (cd "$dir" && run go get -tool "$3@$4" && run go build -o "$1" "$3") >&2
    install_bin "$1" "$dir/$1" "$recipe"
}

build_otelcol() {
    local manifest recipe
    manifest=$(otelcol_manifest)
    recipe="otelcol $(go env GOVERSION) $(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)"
    current otelcol "$recipe" && return
    echo "otel-binaries: building the Collector $OTELCOL_VERSION" >&2
    local tools=$build_dir/tools
    if [[ ! -x $tools/builder || $(cat "$tools/builder.version" 2>/dev/null) != "$OTELCOL_VERSION" ]]; then
        GOBIN=$tools run go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" >&2
        echo "$OTELCOL_VERSION" >"$tools/builder.version"
    fi
    rm -rf "$build_dir/otelcol" && mkdir -p "$build_dir/otelcol"
    printf '%s\n' "$manifest" >"$build_dir/otelcol-builder.yaml"
    run "$tools/builder" --config="$build_dir/otelcol-builder.yaml" >&2
    install_bin otelcol "$build_dir/otelcol/otelcol" "$recipe"
}

# Only the directory goes to stdout: `export ROARK_OTEL_BIN_DIR=$(scripts/otel-binaries.sh)`.
# One build at a time per cache directory (parallel CI jobs, or a developer and a test run).
exec 9>"$build_dir/.lock"
flock 9
targets=("$@")
((${#targets[@]})) || targets=(jaeger otelcol docker-compose)
for name in "${targets[@]}"; do
    case $name in
    jaeger) build_as_tool jaeger "$(jaeger_gomod)" github.com/jaegertracing/jaeger/cmd/jaeger "$JAEGER_VERSION" ;;
    otelcol) build_otelcol ;;
    docker-compose) build_as_tool docker-compose "$(compose_gomod)" github.com/docker/compose/v5/cmd "$COMPOSE_VERSION" ;;
    *)
        echo "otel-binaries: unknown binary '$name' (jaeger, otelcol, docker-compose)" >&2
        exit 2
        ;;
    esac
done
echo "$bin_dir"
