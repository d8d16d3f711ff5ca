# shellcheck shell=bash
# image-recipe.sh - what goes into a local VM's image: the packages of each variant and the
# customisation run inside mmdebstrap's build. Sourced by scripts/build-image, which hashes
# this file with itself into the image's cache key, so editing it rebuilds.

# The packages of $VARIANT: INCLUDE (the guest's base, without a bootloader: direct kernel
# boot; docs/local-vms.md), DOCKER_PACKAGES, VERSION, RELEASE. Fails for an unknown variant.
# shellcheck disable=SC2034  # read by build-image
variant_packages() {
	# apparmor is only a Recommends of docker.io, and so is docker-cli of trixie's.
	case $VARIANT in
	debian-13 | debian-13-docker)
		VERSION=13 RELEASE=trixie NET_PACKAGES=systemd-resolved
		DOCKER_PACKAGES="docker.io docker-cli docker-buildx docker-compose apparmor" ;;
	debian-12 | debian-12-docker)
		VERSION=12 RELEASE=bookworm NET_PACKAGES=ifupdown,isc-dhcp-client
		DOCKER_PACKAGES="docker.io apparmor" ;;
	*) return 1 ;;
	esac
	# rsync: scripts/machine scp --delta.
	INCLUDE=linux-image-amd64,systemd-sysv,udev,dbus,kmod,iproute2,$NET_PACKAGES,netbase,openssh-server,cloud-init,cloud-guest-utils,ca-certificates,sudo,iputils-ping,procps,less,systemd-timesyncd,e2fsprogs,initramfs-tools,curl,gnupg,apt-transport-https,rsync
}

in_chroot() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"; }

# ---- hooks, inside mmdebstrap's run
# mmdebstrap runs each --customize-hook as `sh -c HOOK exec ROOTDIR`, with /proc, /sys and
# /dev mounted in ROOTDIR and its policy-rc.d in place (no daemon starts). The hooks call
# this script again (copies in the work directory: the originals may sit in a 0700 home
# the namespace's root cannot read). Their settings come through the environment.
hook_customize() {
	echo 'LABEL=rootfs / ext4 errors=remount-ro,discard 0 1' >"$R/etc/fstab"
	echo localhost >"$R/etc/hostname"
	printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
	rm -f "$R/etc/apt/sources.list" "$R"/etc/apt/sources.list.d/*   # mmdebstrap's one-line source
	cat >"$R/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $RELEASE $RELEASE-updates
Components: main
Signed-By: $KEYRING

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $RELEASE-security
Components: main
Signed-By: $KEYRING
EOF
	cat >"$R/etc/cloud/cloud.cfg.d/90-docker-machine-pulumi.cfg" <<'EOF'
# docker-machine-pulumi: only the NoCloud seed (no metadata-service probing);
# C.UTF-8 because a minbase image has no en_US.UTF-8 (cc_locale would fail).
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
EOF
	if ((VERSION >= 13)); then
		cat >>"$R/etc/cloud/cloud.cfg.d/90-docker-machine-pulumi.cfg" <<'EOF'
# Render the network config for systemd-networkd (the image has no ifupdown).
system_info:
  network:
    renderers: [ networkd ]
    activators: [ networkd ]
EOF
		in_chroot systemctl enable systemd-networkd.service systemd-networkd-wait-online.service systemd-resolved.service
		# resolved's default also answers LLMNR on every network (port 5355).
		mkdir -p "$R/etc/systemd/resolved.conf.d"
		printf '[Resolve]\nLLMNR=no\n' >"$R/etc/systemd/resolved.conf.d/90-docker-machine-pulumi.conf"
		# sshd runs as ssh.service; the generator's AF_UNIX/AF_VSOCK listeners are not
		# needed, and it fails on every boot of a VM without a vsock device.
		mkdir -p "$R/etc/systemd/system-generators"
		ln -sfn /dev/null "$R/etc/systemd/system-generators/systemd-ssh-generator"
	else
		printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' >"$R/etc/network/interfaces"
		mkdir -p "$R/etc/network/interfaces.d"
	fi
	# Fallback: make SSH host keys if cloud-init did not (the image ships without).
	cat >"$R/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys if missing
After=cloud-init.service
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
	in_chroot systemctl enable ssh-hostkeys.service systemd-timesyncd.service
	in_chroot systemctl mask apt-daily.timer apt-daily-upgrade.timer
	# The kernel lives outside the disk (direct kernel boot): an upgrade inside the
	# guest would not be booted and would remove the running kernel's modules.
	in_chroot apt-mark hold linux-image-amd64
}

# The Docker packages come from the image's own sources, -updates and -security included.
hook_docker() {
	local packages
	read -ra packages <<<"$DOCKER_PACKAGES"
	in_chroot apt-get -q --error-on=any update
	in_chroot apt-get -q -y -o Dpkg::Use-Pty=0 --no-install-recommends install "${packages[@]}"
	# First start only after provisioning wrote the TLS daemon config (saves a
	# restart under TCG); containerd stays enabled.
	in_chroot systemctl disable docker.service docker.socket
	in_chroot dpkg-query -W "${packages[@]}" containerd runc
}

# Not /tmp: mmdebstrap keeps its apt configuration there until its own cleanup empties it.
# Its cleanup/apt (an update with the lists gone) and cleanup/reproducible (which makes
# /etc/machine-id 0644) are skipped by the caller.
hook_cleanup() {
	rm -f "$R"/etc/ssh/ssh_host_*                                 # per-VM host keys
	: >"$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"     # per-VM identity
	in_chroot apt-get clean
	rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin
	rm -f "$R"/var/log/*.log "$R"/var/log/apt/* "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
	find "$R/var/tmp" -mindepth 1 -delete
	rm -f "$R/etc/resolv.conf"   # mmdebstrap copied the host's
	if ((VERSION >= 13)); then
		ln -s ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
	else
		: >"$R/etc/resolv.conf"   # ifupdown's DHCP client fills it
	fi
}

