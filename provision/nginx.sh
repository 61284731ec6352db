#!/usr/bin/env bash
# nginx under the version policy from regions.toml: an optional apt pin
# (NGINX_PIN, such as "1.11.*") and HTTP/2 only from NGINX_FLOOR on, decided
# from the installed binary's own `nginx -v` output. In the lab the step also
# makes a TLS certificate and the site that fronts the app (Dokku writes the
# app's site on the other boxes).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PIN_FILE=/etc/apt/preferences.d/vatfleet-nginx
TLS_DIR=/etc/nginx/tls
# `invoke certs` installs the shared name's certificate under this name; until
# it does, the lab's self-signed certificate takes its place.
SITE_CERT="$TLS_DIR/${VATFLEET_DOMAIN:-lab}.crt"
SITE_KEY="$TLS_DIR/${VATFLEET_DOMAIN:-lab}.key"
SITE=/etc/nginx/sites-available/vatfleet
UPSTREAM=/etc/nginx/vatfleet/upstream.conf
NGINX_FLOOR="${NGINX_FLOOR:-1.11.9}"
RELOAD=0

configure_pin() {
    if [[ -z "${NGINX_PIN:-}" ]]; then
        remove_file "$PIN_FILE" || true
        return
    fi
    if put_file "$PIN_FILE" 644 <<EOF; then
# Written by provision/nginx.sh from nginx_pin in regions.toml.
Package: nginx nginx-common nginx-core nginx-full nginx-light libnginx-mod-*
Pin: version $NGINX_PIN
Pin-Priority: 1001
EOF
        # The pin changes what apt offers: read the package lists again.
        # shellcheck disable=SC2034  # read by apt_update_once in lib.sh
        APT_UPDATED=0
    fi
}

installed_version() {
    dpkg-query -W -f='${Version}' nginx 2>/dev/null || true
}

install_nginx() {
    apt_install nginx
    if [[ -z "${NGINX_PIN:-}" ]]; then
        return
    fi
    local version
    version="$(installed_version)"
    # shellcheck disable=SC2053  # the pin is a glob on purpose ("1.11.*")
    if [[ "$version" == $NGINX_PIN ]]; then
        return
    fi
    apt_update_once
    apt-get install -y -q --allow-downgrades -o Dpkg::Options::=--force-confold \
        nginx >/dev/null || fail "no nginx version matches nginx_pin=$NGINX_PIN; \
check the pin in regions.toml against \`apt-cache policy nginx\`"
    changed "installed nginx $(installed_version) for pin $NGINX_PIN"
}

# Decide HTTP/2 from the real `nginx -v` (stderr) and record the decision.
# NOTE: on Dokku boxes Dokku's own nginx template chooses HTTP/2 for the app
# site; the recorded decision is what the infra suite holds it to.
record_http2_decision() {
    local output decision version
    output="$(nginx -v 2>&1)"
    version="$(nginx_version_from_output "$output")"
    decision="$(nginx_http2_decision "$output" "$NGINX_FLOOR")"
    log "nginx $version, floor $NGINX_FLOOR: http2 $decision"
    put_file "$STATE_DIR/nginx-http2" 644 <<<"$decision" || true
    HTTP2="$decision"
    NGINX_VERSION="$version"
}

is_self_signed() {
    [[ "$(openssl x509 -in "$1" -noout -issuer 2>/dev/null | sed 's/^issuer=//')" \
        == "$(openssl x509 -in "$1" -noout -subject 2>/dev/null | sed 's/^subject=//')" ]]
}

make_certificate() {
    local cert="$SITE_CERT" key="$SITE_KEY"
    local names="DNS:${VATFLEET_HOSTNAME:-localhost},DNS:${VATFLEET_DOMAIN:-localhost}"
    names+=",DNS:localhost,IP:127.0.0.1"
    # A certificate that a CA issued (installed by `invoke certs`) is kept.
    if [[ -s "$cert" && -s "$key" ]] && ! is_self_signed "$cert"; then
        return
    fi
    if [[ -s "$cert" && -s "$key" ]] \
        && openssl x509 -in "$cert" -noout -checkend 2592000 >/dev/null \
        && [[ "$(cat "$TLS_DIR/lab.names" 2>/dev/null)" == "$names" ]]; then
        return
    fi
    install -d -m 755 "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 \
        -subj "/CN=${VATFLEET_HOSTNAME:-localhost}" -addext "subjectAltName=$names" \
        -keyout "$key" -out "$cert" 2>/dev/null
    chmod 600 "$key"
    printf '%s\n' "$names" >"$TLS_DIR/lab.names"
    changed "made a self-signed certificate for $names"
    RELOAD=1
}

# The listen line for TLS: nginx 1.25.1 replaced `listen ... http2` with the
# `http2` directive (nginx changelog, 1.25.1).
tls_listen_lines() {
    if [[ "$HTTP2" != on ]]; then
        printf '    listen 443 ssl default_server;\n'
    elif version_at_least "$NGINX_VERSION" 1.25.1; then
        printf '    listen 443 ssl default_server;\n    http2 on;\n'
    else
        printf '    listen 443 ssl http2 default_server;\n'
    fi
}

write_lab_site() {
    if [[ ! -f "$UPSTREAM" ]]; then
        # Replaced by the deploy step with the port of the live release.
        install -d -m 755 "$(dirname "$UPSTREAM")"
        printf 'server 127.0.0.1:5000;\n' >"$UPSTREAM"
        changed "wrote a placeholder $UPSTREAM"
        RELOAD=1
    fi

    local proxy
    # shellcheck disable=SC2016  # nginx variables, not shell ones
    proxy='        proxy_pass http://vatfleet_app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-Start $msec;
        proxy_connect_timeout 5s;
        proxy_read_timeout 30s;'
    if put_file "$SITE" 644 <<EOF; then
# Written by provision/nginx.sh: the lab stand-in for Dokku's app site.
upstream vatfleet_app {
    include $UPSTREAM;
    keepalive 16;
}

server {
    listen 80 default_server;
    server_name _;
    location / {
$proxy
    }
}

server {
$(tls_listen_lines)
    server_name _;
    ssl_certificate $SITE_CERT;
    ssl_certificate_key $SITE_KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
$proxy
    }
}
EOF
        RELOAD=1
    fi
    if [[ "$(readlink /etc/nginx/sites-enabled/vatfleet || true)" != "$SITE" ]]; then
        ln -sfn "$SITE" /etc/nginx/sites-enabled/vatfleet
        changed "enabled the vatfleet site"
        RELOAD=1
    fi
    if remove_file /etc/nginx/sites-enabled/default; then
        RELOAD=1
    fi
}

main() {
    detect_distro
    configure_pin
    install_nginx
    record_http2_decision
    if is_lab; then
        make_certificate
        write_lab_site
    fi
    nginx -t -q
    enable_now nginx
    if [[ "$RELOAD" == 1 ]]; then
        systemctl reload nginx
        log "reloaded nginx"
    fi
    finish
}

main "$@"
