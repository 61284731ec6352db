#!/usr/bin/env bash
# Reboot recovery: after a reboot or a container restart the app may listen
# on a new address, and nginx must follow it or it answers 502. A unit
# rebuilds the routing at boot: Dokku's proxy config on Dokku boxes, the
# stand-in's nginx upstream in the lab.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

UNIT=/etc/systemd/system/vatfleet-routing.service

dokku_unit() {
    cat <<'UNIT'
# Written by provision/reboot.sh: rebuild the app's containers and nginx
# config once Docker is up, so nginx never keeps a stale container address.
[Unit]
Description=Rebuild Dokku routing after boot
After=docker.service network-online.target
Wants=docker.service network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/dokku ps:rebuild --all
ExecStart=/usr/bin/dokku proxy:build-config --all
TimeoutStartSec=900

[Install]
WantedBy=multi-user.target
UNIT
}

lab_unit() {
    cat <<'UNIT'
# Written by provision/reboot.sh: point nginx at the app release that runs
# after boot (the lab stand-in for Dokku's routing rebuild).
[Unit]
Description=Point nginx at the running app release after boot
After=nginx.service
Wants=nginx.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vatfleet-routing

[Install]
WantedBy=multi-user.target
UNIT
}

main() {
    detect_distro
    local unit_text
    if is_lab; then
        [[ -x /usr/local/sbin/vatfleet-routing ]] \
            || fail "vatfleet-routing is missing; run the lab-services step first"
        unit_text="$(lab_unit)"
    else
        unit_text="$(dokku_unit)"
    fi
    if put_file "$UNIT" 644 <<<"$unit_text"; then
        systemctl daemon-reload
    fi
    if ! systemctl is-enabled --quiet vatfleet-routing.service; then
        systemctl enable --quiet vatfleet-routing.service
        changed "enabled vatfleet-routing.service"
    fi
    finish
}

main "$@"
