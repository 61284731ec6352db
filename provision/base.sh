#!/usr/bin/env bash
# Base system: extra CA certificates, packages, unattended upgrades, apt
# autoremove, key-only SSH, operator keys and a host firewall.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

BASE_PACKAGES=(
    ca-certificates curl openssl gnupg nftables unattended-upgrades
    apt-transport-https python3 rsyslog logrotate netbase
)

# Install the host's extra CA certificates (a TLS-inspecting proxy's, for
# example) that are not already among the system's Mozilla set, so apt, npm
# and pip inside the box trust the same proxy the operator's machine does.
install_extra_ca_certificates() {
    local bundle="$PROVISION_DIR/files/extra-ca.pem"
    local target_dir=/usr/local/share/ca-certificates/vatfleet
    if [[ ! -s "$bundle" ]]; then
        return
    fi

    local work known body digest any=0
    work="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand $work now, the trap runs after return
    trap "rm -rf '$work'" RETURN
    known="$work/known"
    cat /usr/share/ca-certificates/mozilla/*.crt 2>/dev/null \
        | awk '/-----BEGIN CERTIFICATE-----/{b="";next}
               /-----END CERTIFICATE-----/{print b;next}{b=b $0}' | sort -u >"$known"
    awk -v dir="$work" '/-----BEGIN CERTIFICATE-----/{n++; b=""; f=dir "/cert" n}
        {print > f} /-----END CERTIFICATE-----/{close(f)}' "$bundle"

    local cert
    for cert in "$work"/cert*; do
        [[ -e "$cert" ]] || continue
        body="$(grep -v -- '-----' "$cert" | tr -d '\n\r')"
        if grep -qxF -- "$body" "$known"; then
            continue
        fi
        digest="$(printf '%s' "$body" | sha256sum | cut -c1-16)"
        if put_file "$target_dir/extra-$digest.crt" 644 <"$cert"; then
            any=1
        fi
    done
    if [[ "$any" == 1 ]]; then
        update-ca-certificates >/dev/null
        changed "updated the CA store with extra certificates"
    fi
}

configure_unattended_upgrades() {
    put_file /etc/apt/apt.conf.d/20auto-upgrades 644 <<'EOF' || true
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
APT::Periodic::AutocleanInterval "7";
EOF
}

# Key-only login: no passwords, no keyboard-interactive, root by key only.
configure_sshd() {
    local file=/etc/ssh/sshd_config.d/10-vatfleet.conf
    if put_file "$file" 644 <<'EOF'; then
# Written by provision/base.sh: key-only SSH login.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
EOF
        sshd -t
        systemctl reload ssh 2>/dev/null || systemctl restart ssh
        log "reloaded ssh"
    fi
}

# Add each operator key from the uploaded file to the login user's
# authorized_keys, once. Keys come from a local file named in regions.toml.
install_operator_keys() {
    local keys="$PROVISION_DIR/files/operators.pub"
    local user="${VATFLEET_LOGIN_USER:-${SUDO_USER:-root}}"
    if [[ ! -s "$keys" ]]; then
        log "no operator keys uploaded; authorized_keys left as it is"
        return
    fi

    local home auth line
    home="$(getent passwd "$user" | cut -d: -f6)"
    [[ -n "$home" ]] || fail "login user $user not found; set VATFLEET_LOGIN_USER"
    auth="$home/.ssh/authorized_keys"
    install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
    touch "$auth"
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        if ! grep -qxF -- "$line" "$auth"; then
            printf '%s\n' "$line" >>"$auth"
            changed "added operator key ${line##* } for $user"
        fi
    done <"$keys"
    chown "$user:$user" "$auth"
    chmod 600 "$auth"
}

# Resolve VATFLEET_DB_PEERS (names or addresses) to IPv4 addresses.
db_peer_addresses() {
    local peer address
    for peer in ${VATFLEET_DB_PEERS:-}; do
        if [[ "$peer" =~ ^[0-9.]+(/[0-9]+)?$ ]]; then
            printf '%s\n' "$peer"
            continue
        fi
        address="$(getent ahostsv4 "$peer" | awk 'NR==1{print $1}')"
        if [[ -n "$address" ]]; then
            printf '%s\n' "$address"
        else
            log "warning: database peer $peer does not resolve; not allowed in"
        fi
    done
}

# A host firewall in its own nftables table: SSH, HTTP and HTTPS from
# anywhere, the database port from the other regions' boxes on the primary.
configure_firewall() {
    local peers="" db_rule="" address
    if hosts_primary; then
        while IFS= read -r address; do
            [[ -n "$address" ]] && peers+="${peers:+, }$address"
        done < <(db_peer_addresses)
        if [[ -n "$peers" ]]; then
            db_rule="        ip saddr { $peers } tcp dport 5984 accept"
        fi
    fi

    local rules=/etc/nftables.d/vatfleet.nft changed_rules=0
    if put_file "$rules" 644 <<EOF; then
# Written by provision/base.sh. Docker keeps its own tables; this one only
# filters what reaches the box itself.
table inet vatfleet
delete table inet vatfleet
table inet vatfleet {
    chain input {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        ct state invalid drop
        iif lo accept
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport { 22, 80, 443 } accept
$db_rule
    }
}
EOF
        changed_rules=1
    fi

    local unit=/etc/systemd/system/vatfleet-firewall.service
    if put_file "$unit" 644 <<'EOF'; then
[Unit]
Description=vatfleet host firewall (nftables table inet vatfleet)
Wants=network-pre.target
Before=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/nftables.d/vatfleet.nft
ExecStop=/usr/sbin/nft delete table inet vatfleet

[Install]
WantedBy=multi-user.target
EOF
        systemctl daemon-reload
        changed_rules=1
    fi
    if [[ "$changed_rules" == 1 ]] || ! nft list table inet vatfleet >/dev/null 2>&1; then
        nft -f "$rules"
        log "loaded the firewall rules"
    fi
    enable_now vatfleet-firewall.service
}

main() {
    detect_distro
    install_extra_ca_certificates
    apt_install "${BASE_PACKAGES[@]}"
    configure_unattended_upgrades
    configure_sshd
    install_operator_keys
    configure_firewall
    apt_autoremove
    finish
}

main "$@"
