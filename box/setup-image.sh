#!/usr/bin/env bash
# Configure the lab box image while `docker build` runs (not on a live box).
set -euo pipefail

# Units that need hardware or a console have nothing to do in a container.
mask_container_units() {
    systemctl mask \
        getty.target console-getty.service systemd-udevd.service \
        systemd-udev-trigger.service systemd-remount-fs.service \
        systemd-modules-load.service sys-kernel-debug.mount \
        sys-kernel-tracing.mount sys-kernel-config.mount \
        systemd-firstboot.service
}

add_vagrant_user() {
    useradd --create-home --shell /bin/bash vagrant
    printf 'vagrant ALL=(ALL) NOPASSWD:ALL\n' >/etc/sudoers.d/vagrant
    chmod 0440 /etc/sudoers.d/vagrant
    visudo -cf /etc/sudoers.d/vagrant
    install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
    install -m 0600 -o vagrant -g vagrant /tmp/authorized_keys \
        /home/vagrant/.ssh/authorized_keys
}

main() {
    mask_container_units
    systemctl enable ssh.service cron.service
    # Host keys are made per box at boot (ssh-host-keys.conf).
    rm -f /etc/ssh/ssh_host_*
    add_vagrant_user
}

main "$@"
