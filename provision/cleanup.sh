#!/usr/bin/env bash
# Disk hygiene: the cleanup script and its daily cron job, Docker's json-file
# log caps, and `apt-get autoremove` now.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

CLEANUP=/usr/local/sbin/vatfleet-cleanup
CRON_FILE=/etc/cron.d/vatfleet-cleanup
DAEMON_JSON=/etc/docker/daemon.json

install_cleanup() {
    put_file "$CLEANUP" 755 <"$PROVISION_DIR/files/vatfleet-cleanup" || true
    put_file "$CRON_FILE" 644 <<EOF || true
# Written by provision/cleanup.sh: free disk space daily at 04:17.
SHELL=/bin/bash
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
17 4 * * * root $CLEANUP 2>&1 | logger -t vatfleet-cleanup
EOF
}

# Merge log caps into daemon.json, keeping any other settings it has.
cap_docker_logs() {
    if ! command -v dockerd >/dev/null; then
        log "docker log caps: not applicable, Docker is not installed on this box"
        return
    fi
    local merged
    merged="$(python3 - "$DAEMON_JSON" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as handle:
        settings = json.load(handle)
except FileNotFoundError:
    settings = {}
settings["log-driver"] = "json-file"
settings.setdefault("log-opts", {}).update({"max-size": "10m", "max-file": "3"})
print(json.dumps(settings, indent=2, sort_keys=True))
PY
)"
    if put_file "$DAEMON_JSON" 644 <<<"$merged"; then
        # The caps apply to containers created from now on.
        systemctl restart docker
        log "restarted docker"
    fi
}

main() {
    detect_distro
    apt_install cron python3
    enable_now cron
    install_cleanup
    cap_docker_logs
    apt_autoremove
    finish
}

main "$@"
