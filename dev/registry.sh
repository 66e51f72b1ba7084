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
# Not `apt-cache … | grep -q`: grep quits at the first match, apt-cache dies
# of SIGPIPE, and pipefail turns the match into a failure.
offered() {
    local policy
    policy="$(apt-cache policy docker-registry 2>/dev/null)" || return 1
    [[ "$policy" == *"Candidate: "[0-9]* ]]
}
# A fresh machine may have no package lists yet, and a mirror can fail a
# fetch now and then (a bare CI machine once did): refresh up to three times.
for attempt in 1 2 3; do
    offered && break
    "${as_root[@]}" apt-get update -qq || echo "dev/registry.sh: apt-get update failed (attempt $attempt of 3)" >&2
    offered && break
    sleep $((attempt * 5))
done
if ! offered; then
    echo "dev/registry.sh: the apt sources offer no docker-registry package (Debian's 'docker-registry'); add a Debian mirror to /etc/apt/sources.list and run again" >&2
    exit 1
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry apache2-utils
# The package enables a system service on :5000; the tests start their own
# instances, so stop it where a service manager exists (harmless otherwise).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    "${as_root[@]}" systemctl stop docker-registry || true
fi
