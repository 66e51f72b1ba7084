#!/usr/bin/env bash
# Installs the test OCI registry: Debian's own `docker-registry` package (the
# CNCF distribution registry) and `htpasswd` from apache2-utils. The test
# harness (crates/aim-operator/tests/common/registry.rs) starts two
# instances on loopback: one anonymous, one with htpasswd auth.
# Idempotent: does nothing when both binaries are present.
set -euo pipefail
if command -v docker-registry >/dev/null 2>&1 && command -v htpasswd >/dev/null 2>&1; then
    exit 0
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
# A fresh machine may have no package lists yet.
if ! apt-cache policy docker-registry | grep -q 'Candidate: [0-9]'; then
    "${as_root[@]}" apt-get update -qq
fi
if ! apt-cache policy docker-registry | grep -q 'Candidate: [0-9]'; then
    echo "dev/registry.sh: the apt sources offer no docker-registry package (Debian's 'docker-registry'); add a Debian mirror to /etc/apt/sources.list and run again" >&2
    exit 1
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry apache2-utils
# The package enables a system service on :5000; the tests start their own
# instances, so stop it where a service manager exists (harmless otherwise).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    "${as_root[@]}" systemctl stop docker-registry || true
fi
