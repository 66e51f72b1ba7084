# Sourced by dev/demo and dev/test: where caches live and which tools exist.
# Caches stay outside the repository so a fresh clone (CI) reuses them.
set -euo pipefail
AIM_CACHE_DIR="${AIM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aim}"
export AIM_CACHE_DIR
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AIM_CACHE_DIR/target}"
# Test failures print their own explanations; backtraces only bury them.
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"

need() {
    command -v "$1" >/dev/null 2>&1 || {
        printf 'error: %s is not installed. %s\n' "$1" "$2" >&2
        exit 1
    }
}
need cargo "Install Rust (https://rustup.rs, or apt-get install cargo) and run again."
need go "Install Go >= 1.24 (apt-get install golang-go, or add /usr/local/go/bin to PATH) and run again."
