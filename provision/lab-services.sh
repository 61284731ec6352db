#!/usr/bin/env bash
# Lab boxes only: what Dokku and its plugins provide on the other boxes.
# Redis for the app, PouchDB Server as the CouchDB-compatible primary on the
# box that hosts it (CouchDB is not in Debian's packages), Python for the
# app's releases, and the release tools the deploy step drives.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

POUCHDB_VERSION=4.2.0
POUCHDB_PREFIX=/opt/pouchdb-server
POUCHDB_DATA=/var/lib/pouchdb-server
POUCHDB_PORT=5984
DATABASE=users
ADMIN_FILE="$STATE_DIR/couchdb-admin"
APP_ENV="$STATE_DIR/app.env"
APP_ROOT=/srv/vatfleet

install_redis() {
    # Debian's unit requests a user namespace, which a lab box (a container
    # without --privileged) cannot make. Written before the package, so the
    # first start already reads it.
    if put_file /etc/systemd/system/redis-server.service.d/lab.conf 644 <<'EOF'; then
[Service]
PrivateUsers=no
EOF
        systemctl daemon-reload
        systemctl reset-failed redis-server.service 2>/dev/null || true
    fi
    apt_install redis-server
    enable_now redis-server
}

# The system user the app and PouchDB Server run as.
add_service_user() {
    local user="$1" home="$2"
    if ! getent passwd "$user" >/dev/null; then
        useradd --system --home-dir "$home" --shell /usr/sbin/nologin "$user"
        changed "added system user $user"
    fi
}

pouchdb_installed_version() {
    local manifest="$POUCHDB_PREFIX/node_modules/pouchdb-server/package.json"
    [[ -f "$manifest" ]] || return 0
    sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$manifest" | head -n 1
}

install_pouchdb_server() {
    apt_install nodejs npm
    if [[ "$(pouchdb_installed_version)" == "$POUCHDB_VERSION" ]]; then
        return
    fi
    install -d -m 755 "$POUCHDB_PREFIX"
    # Node.js reads the system CA store, extra certificates included, only
    # through NODE_EXTRA_CA_CERTS.
    (cd "$POUCHDB_PREFIX" \
        && NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
            npm install --no-audit --no-fund --loglevel=error \
            "pouchdb-server@$POUCHDB_VERSION" >/dev/null)
    changed "installed pouchdb-server $POUCHDB_VERSION"
}

configure_pouchdb_unit() {
    local host=127.0.0.1 did_change=0
    # Other regions' boxes replicate from the primary; the firewall admits
    # only them (provision/base.sh).
    [[ -n "${VATFLEET_DB_PEERS:-}" ]] && host=0.0.0.0
    add_service_user pouchdb "$POUCHDB_DATA"
    if [[ ! -d "$POUCHDB_DATA" ]]; then
        install -d -m 750 -o pouchdb -g pouchdb "$POUCHDB_DATA"
        changed "made $POUCHDB_DATA"
    fi
    if put_file /etc/systemd/system/pouchdb-server.service 644 <<EOF; then
[Unit]
Description=PouchDB Server, the lab's CouchDB-compatible primary
After=network.target

[Service]
User=pouchdb
WorkingDirectory=$POUCHDB_DATA
ExecStart=/usr/bin/node $POUCHDB_PREFIX/node_modules/pouchdb-server/bin/pouchdb-server --host $host --port $POUCHDB_PORT --dir $POUCHDB_DATA --config $POUCHDB_DATA/config.json --no-color
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
        systemctl daemon-reload
        did_change=1
    fi
    restart_if "$did_change" pouchdb-server.service
}

wait_for_pouchdb() {
    local _
    for _ in $(seq 1 60); do
        curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$POUCHDB_PORT/" && return
        sleep 1
    done
    fail "PouchDB Server did not answer on port $POUCHDB_PORT within 60 s; \
see journalctl -u pouchdb-server"
}

# End the "admin party": make an admin whose password only this box knows,
# then create the user database.
configure_pouchdb_admin() {
    local password status
    if [[ ! -s "$ADMIN_FILE" ]]; then
        install -d -m 755 "$STATE_DIR"
        (umask 077 && openssl rand -hex 24 >"$ADMIN_FILE")
        changed "made the database admin password in $ADMIN_FILE"
    fi
    password="$(cat "$ADMIN_FILE")"

    status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
        -u "admin:$password" "http://127.0.0.1:$POUCHDB_PORT/_session")"
    if ! curl -fs -o /dev/null --max-time 5 -u "admin:$password" \
        "http://127.0.0.1:$POUCHDB_PORT/_config/admins/admin"; then
        curl -fsS -o /dev/null --max-time 5 -X PUT -H 'Content-Type: application/json' \
            --data "\"$password\"" \
            "http://127.0.0.1:$POUCHDB_PORT/_config/admins/admin" \
            || fail "cannot set the PouchDB Server admin (HTTP $status); \
reset it by removing $POUCHDB_DATA/config.json and $ADMIN_FILE"
        changed "set the PouchDB Server admin"
    fi

    status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 \
        -u "admin:$password" "http://127.0.0.1:$POUCHDB_PORT/$DATABASE")"
    if [[ "$status" == 404 ]]; then
        curl -fsS -o /dev/null --max-time 10 -X PUT -u "admin:$password" \
            "http://127.0.0.1:$POUCHDB_PORT/$DATABASE"
        changed "created database $DATABASE"
    elif [[ "$status" != 200 ]]; then
        fail "GET /$DATABASE on PouchDB Server returned HTTP $status"
    fi
}

couchdb_url() {
    if hosts_primary; then
        printf 'http://admin:%s@127.0.0.1:%s/%s' \
            "$(cat "$ADMIN_FILE")" "$POUCHDB_PORT" "$DATABASE"
    else
        printf '%s' "${VATFLEET_COUCHDB_URL:-}"
    fi
}

write_app_env() {
    local url
    url="$(couchdb_url)"
    if [[ -z "$url" ]]; then
        log "warning: no primary database for this box; COUCHDB_URL left empty"
    fi
    install -d -m 755 "$STATE_DIR"
    put_file "$APP_ENV" 640 <<EOF || true
# Written by provision/lab-services.sh: the app's environment.
REGION=${VATFLEET_REGION:-local}
REDIS_URL=redis://127.0.0.1:6379/0
COUCHDB_URL=$url
TRUSTED_PROXIES=127.0.0.1,::1
EOF
    chgrp vatfleet "$APP_ENV"
}

install_release_tools() {
    local tool
    add_service_user vatfleet "$APP_ROOT"
    apt_install python3 python3-venv python3-pip
    for tool in vatfleet-release vatfleet-routing; do
        put_file "/usr/local/sbin/$tool" 755 <"$PROVISION_DIR/files/$tool" || true
    done
    if [[ ! -d "$APP_ROOT/releases" ]]; then
        install -d -m 755 -o vatfleet -g vatfleet "$APP_ROOT" "$APP_ROOT/releases" \
            "$APP_ROOT/venvs"
        changed "made $APP_ROOT"
    fi
    if put_file /etc/systemd/system/vatfleet-web@.service 644 \
        <"$PROVISION_DIR/files/vatfleet-web@.service"; then
        systemctl daemon-reload
    fi
}

main() {
    detect_distro
    is_lab || not_applicable "Dokku and its plugins provide these services"
    apt_install curl openssl
    install_redis
    if hosts_primary; then
        install_pouchdb_server
        configure_pouchdb_unit
        wait_for_pouchdb
        configure_pouchdb_admin
    fi
    install_release_tools
    write_app_env
    finish
}

main "$@"
