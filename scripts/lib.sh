# Shared by the scripts in this folder (sourced, not run).

# A bold heading.
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# ensure_packages PKG...: installs the Debian packages that are missing with
# apt-get when running as root; otherwise names them in a warning (the tests
# that need them then fail naming their prerequisite).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "==> WARNING: missing Debian packages (run as root to install): ${missing[*]}" >&2
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { echo "apt-get install failed: ${missing[*]}" >&2; return 1; }
}
