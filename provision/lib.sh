# shellcheck shell=bash
# Shared helpers of the provisioning steps. Each step sources this file.
#
# A step checks before every change, so running it twice changes nothing the
# second time. Every change is logged as `changed: WHAT` and counted; the last
# line a step prints is `changed=N`, which fleet/provision.py reads.
#
# Settings arrive as environment variables (fleet/provision.py sets them from
# regions.toml): VATFLEET_REGION, VATFLEET_PROVIDER, VATFLEET_HOSTNAME,
# VATFLEET_DOMAIN, VATFLEET_APP, VATFLEET_HOSTS_PRIMARY (1 or 0),
# VATFLEET_DB_PEERS, NGINX_PIN, NGINX_FLOOR, DISK_ALERT_PERCENT.
# VATFLEET_TRACE=1 switches on `set -x`.

[[ -n "${VATFLEET_TRACE:-}" ]] && set -x

# shellcheck disable=SC2034  # read by the steps that source this file
PROVISION_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STEP_NAME="$(basename "${0%.sh}")"
CHANGES=0
# shellcheck disable=SC2034  # read by the steps
STATE_DIR=/etc/vatfleet
export DEBIAN_FRONTEND=noninteractive

# fleet/provision.py uploads the settings as a file, not on a command line,
# because the primary database URL can hold a password.
if [[ -f "$PROVISION_DIR/files/settings.env" ]]; then
    set -a
    # shellcheck source=/dev/null  # made per region by fleet/provision.py
    source "$PROVISION_DIR/files/settings.env"
    set +a
fi

log() { printf '%s: %s\n' "$STEP_NAME" "$*"; }
fail() { printf '%s: error: %s\n' "$STEP_NAME" "$*" >&2; exit 1; }

# Count and log one change.
changed() {
    CHANGES=$((CHANGES + 1))
    log "changed: $*"
}

# Print the summary line fleet/provision.py reads. Call it last.
finish() {
    printf 'changed=%d\n' "$CHANGES"
}

# Print a step that does not apply here, with the reason, and stop.
not_applicable() {
    log "not applicable: $*"
    finish
    exit 0
}

is_lab() { [[ "${VATFLEET_PROVIDER:-}" == "docker" ]]; }
hosts_primary() { [[ "${VATFLEET_HOSTS_PRIMARY:-0}" == "1" ]]; }

# The one place that tells Ubuntu and Debian apart. Sets DISTRO_ID
# (ubuntu|debian) and DISTRO_CODENAME, and fails on any other system.
detect_distro() {
    local id codename
    # shellcheck source=/dev/null  # /etc/os-release exists on both systems
    id="$(. /etc/os-release && printf '%s' "${ID:-}")"
    # shellcheck source=/dev/null
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    case "$id" in
        ubuntu | debian) ;;
        *) fail "unsupported system ID=$id in /etc/os-release; use Ubuntu LTS or Debian 12" ;;
    esac
    # shellcheck disable=SC2034  # read by the steps
    DISTRO_ID="$id"
    # shellcheck disable=SC2034
    DISTRO_CODENAME="$codename"
}

# ----- packages ---------------------------------------------------------------

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

APT_UPDATED=0
apt_update_once() {
    if [[ "$APT_UPDATED" == 1 ]]; then
        return
    fi
    apt-get update -q >/dev/null
    APT_UPDATED=1
}

# Install the packages that are missing; log each one.
apt_install() {
    local missing=() package
    for package in "$@"; do
        is_installed "$package" || missing+=("$package")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return
    fi
    apt_update_once
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    changed "installed ${missing[*]}"
}

# Remove packages nothing depends on; a change only if apt removed something.
apt_autoremove() {
    local planned
    planned="$(apt-get -s autoremove --purge 2>/dev/null | grep -c '^Remv ' || true)"
    if [[ "$planned" == 0 ]]; then
        return
    fi
    apt-get autoremove -y -q --purge >/dev/null
    changed "apt-get autoremove removed $planned packages"
}

# ----- files and services -----------------------------------------------------

# Write stdin to PATH with MODE if the content differs. Returns 0 when the
# file changed, 1 when it was already up to date.
put_file() {
    local path="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [[ -f "$path" ]] && cmp -s "$tmp" "$path" \
        && [[ "$(stat -c %a "$path")" == "$mode" ]]; then
        rm -f "$tmp"
        return 1
    fi
    install -D -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
    changed "wrote $path"
    return 0
}

# Remove PATH if it exists. Returns 0 when something was removed.
remove_file() {
    if [[ ! -e "$1" ]]; then
        return 1
    fi
    rm -f "$1"
    changed "removed $1"
    return 0
}

enable_now() {
    local unit="$1"
    if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl enable --quiet "$unit"
        changed "enabled $unit"
    fi
    if ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
        changed "started $unit"
    fi
}

# Restart a unit when a file it reads changed; start it if it is down.
restart_if() {
    local did_change="$1" unit="$2"
    if [[ "$did_change" == 1 ]] && systemctl is-active --quiet "$unit"; then
        systemctl restart "$unit"
        log "restarted $unit"
    fi
    enable_now "$unit"
}

# ----- nginx version policy ---------------------------------------------------

# Print the version number from `nginx -v` output, which nginx writes to
# stderr as "nginx version: nginx/1.18.0 (Ubuntu)" (the bare "nginx/1.9.5"
# form is read too). Fails on other text.
nginx_version_from_output() {
    local output="$1" version
    version="$(printf '%s\n' "$output" \
        | sed -n 's|^\(nginx version: \)\{0,1\}nginx/\([0-9][0-9.]*\).*$|\2|p' \
        | head -n 1)"
    version="${version%.}"
    if [[ -z "$version" ]]; then
        printf 'cannot read an nginx version from %q\n' "$output" >&2
        return 1
    fi
    printf '%s\n' "$version"
}

# True when version A >= version B, comparing dot-separated numbers.
version_at_least() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

# Print "on" when the installed nginx may serve HTTP/2 under FLOOR, else "off".
nginx_http2_decision() {
    local output="$1" floor="$2" version
    version="$(nginx_version_from_output "$output")" || return 1
    if version_at_least "$version" "$floor"; then
        printf 'on\n'
    else
        printf 'off\n'
    fi
}
