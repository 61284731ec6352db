#!/usr/bin/env bash
# Dokku with its letsencrypt, redis and couchdb plugins (couchdb only on the
# box that hosts the primary database), the app with its domain and
# environment, and the Redis and CouchDB services linked so the app reads
# REDIS_URL and COUCHDB_URL. Ubuntu LTS only: Dokku publishes no packages
# for Debian's lab boxes, whose stand-in is provision/lab-services.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

DOKKU_KEYRING=/usr/share/keyrings/dokku.gpg
DOKKU_LIST=/etc/apt/sources.list.d/dokku.list
# Dokku's apt repository and signing key (Dokku documentation,
# "Installing Dokku via the package manager").
DOKKU_REPO=https://packagecloud.io/dokku/dokku/ubuntu/
DOKKU_KEY_URL=https://packagecloud.io/dokku/dokku/gpgkey
APP="${VATFLEET_APP:-vatrates}"
REDIS_SERVICE="$APP-redis"
COUCHDB_SERVICE="$APP-couchdb"

declare -A PLUGINS=(
    [letsencrypt]=https://github.com/dokku/dokku-letsencrypt.git
    [redis]=https://github.com/dokku/dokku-redis.git
    [couchdb]=https://github.com/dokku/dokku-couchdb.git
)

add_dokku_repository() {
    if [[ ! -s "$DOKKU_KEYRING" ]]; then
        local armored
        armored="$(mktemp)"
        # shellcheck disable=SC2064  # expand now
        trap "rm -f '$armored'" RETURN
        # The key is fetched to a file and checked by gpg, never run.
        curl -fsSL --max-time 60 -o "$armored" "$DOKKU_KEY_URL"
        gpg --dearmor <"$armored" >"$DOKKU_KEYRING"
        changed "added Dokku's signing key"
    fi
    if put_file "$DOKKU_LIST" 644 <<EOF; then
deb [signed-by=$DOKKU_KEYRING] $DOKKU_REPO $DISTRO_CODENAME main
EOF
        # shellcheck disable=SC2034  # read by apt_update_once in lib.sh
        APT_UPDATED=0
    fi
}

install_dokku() {
    if is_installed dokku; then
        return
    fi
    debconf-set-selections <<EOF
dokku dokku/vhost_enable boolean true
dokku dokku/hostname string ${VATFLEET_HOSTNAME:?VATFLEET_HOSTNAME is not set}
dokku dokku/skip_key_file boolean true
dokku dokku/nginx_enable boolean true
EOF
    apt_install docker.io dokku
    dokku plugin:install-dependencies --core
}

install_plugins() {
    local name installed
    installed="$(dokku plugin:list 2>/dev/null || true)"
    for name in letsencrypt redis couchdb; do
        if [[ "$name" == couchdb ]] && ! hosts_primary; then
            continue
        fi
        if grep -qw "$name" <<<"$installed"; then
            continue
        fi
        dokku plugin:install "${PLUGINS[$name]}" "$name"
        changed "installed the Dokku plugin $name"
    done
}

configure_app() {
    if ! dokku apps:exists "$APP" >/dev/null 2>&1; then
        dokku apps:create "$APP"
        changed "created the Dokku app $APP"
    fi

    local domains
    domains="$(dokku domains:report "$APP" --domains-app-vhosts 2>/dev/null || true)"
    local wanted
    for wanted in "${VATFLEET_HOSTNAME}" "${VATFLEET_DOMAIN}"; do
        [[ -z "$wanted" ]] && continue
        if ! grep -qw -- "$wanted" <<<"$domains"; then
            dokku domains:add "$APP" "$wanted"
            changed "added domain $wanted to $APP"
        fi
    done

    if [[ "$(dokku config:get "$APP" REGION 2>/dev/null || true)" != "$VATFLEET_REGION" ]]; then
        dokku config:set --no-restart "$APP" "REGION=$VATFLEET_REGION" >/dev/null
        changed "set REGION=$VATFLEET_REGION on $APP"
    fi
}

# Let the keys that may log in to the box also `git push` to Dokku, which
# keeps its own list of deploy keys.
add_deploy_keys() {
    local user="${VATFLEET_LOGIN_USER:-root}" home keys known line name
    home="$(getent passwd "$user" | cut -d: -f6)"
    keys="$home/.ssh/authorized_keys"
    [[ -s "$keys" ]] || return 0
    known="$(dokku ssh-keys:list 2>/dev/null || true)"
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        name="deploy-$(printf '%s' "$line" | sha256sum | cut -c1-12)"
        if grep -qw -- "$name" <<<"$known"; then
            continue
        fi
        dokku ssh-keys:add "$name" <<<"$line" >/dev/null
        changed "added Dokku deploy key $name"
    done <"$keys"
}

# Create a service once and link it; linking sets REDIS_URL or COUCHDB_URL.
link_service() {
    local plugin="$1" service="$2"
    if ! dokku "$plugin:exists" "$service" >/dev/null 2>&1; then
        dokku "$plugin:create" "$service"
        changed "created $plugin service $service"
    fi
    if ! dokku "$plugin:linked" "$service" "$APP" >/dev/null 2>&1; then
        dokku "$plugin:link" "$service" "$APP" --no-restart
        changed "linked $service to $APP"
    fi
}

# Boxes without the primary read it over the network from the primary box.
set_remote_couchdb() {
    if [[ -z "${VATFLEET_COUCHDB_URL:-}" ]]; then
        log "warning: no VATFLEET_COUCHDB_URL for this region; COUCHDB_URL not set"
        return
    fi
    if [[ "$(dokku config:get "$APP" COUCHDB_URL 2>/dev/null || true)" \
        != "$VATFLEET_COUCHDB_URL" ]]; then
        # The value holds a password, so this step never prints it.
        dokku config:set --no-restart "$APP" "COUCHDB_URL=$VATFLEET_COUCHDB_URL" \
            >/dev/null
        changed "set COUCHDB_URL on $APP"
    fi
}

main() {
    detect_distro
    if is_lab; then
        not_applicable "Dokku's package repository is out of reach of lab boxes \
and Dokku publishes no Debian packages; lab-services runs the stand-in"
    fi
    [[ "$DISTRO_ID" == ubuntu ]] || fail "Dokku needs Ubuntu LTS, found $DISTRO_ID"
    apt_install ca-certificates curl gnupg debconf-utils
    add_dokku_repository
    install_dokku
    install_plugins
    configure_app
    add_deploy_keys
    link_service redis "$REDIS_SERVICE"
    if hosts_primary; then
        link_service couchdb "$COUCHDB_SERVICE"
    else
        set_remote_couchdb
    fi
    finish
}

main "$@"
