# strata-testns init: runs as PID 1 of a fresh PID+mount+UTS+IPC namespace (started by
# `unshare --fork`), gives it a private view of the machine and execs systemd.
# Arguments: TOKEN OWNER [HOST_SRC INSIDE_DST]...  (OWNER: "pid starttime pidns" of the
# process that booted it, so that an instance whose owner died can be recognised and reaped)
# Every step answers a danger of docs note systemd-in-namespace.md; the numbers refer to it.
# Nothing here may write to a host path: only to mounts created below (all private).
set -eu
say() { echo "strata-testns-init: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$$" = 1 ] || die "not PID 1 of a new PID namespace (pid $$)"
TOKEN=${1-}
case $TOKEN in '' | *[!0-9a-f]*) die "bad instance token '$TOKEN'" ;; esac
[ ${#TOKEN} -eq 32 ] || die "bad instance token length '$TOKEN'"
OWNER=${2-}
[ -n "$OWNER" ] || die "missing owner record"
shift 2
[ $(($# % 2)) -eq 0 ] || die "bind arguments must come in HOST INSIDE pairs"
say started

# unshare --propagation private already did this; repeat it so that no mount below can ever
# propagate to the host even if the caller forgot.
# -n on this and the /run mount: libmount would otherwise create /run/mount (its utab) on the
# host's /run, which is still visible at this point.
mount -n --make-rprivate /

S=/run/strata-test
STAGE=$S/stage
TMPFS_OPTS=nosuid,nodev,x-initrd.mount

# 1. A private /run first: it is where systemd keeps its state, and our staging area.
mount -n -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p "$STAGE"

# Read-only binds are staged before /tmp, /var/tmp and /dev get covered, so sources living
# there stay reachable; they are moved to their inside path once the private mounts exist.
i=0
src=
for a in "$@"; do
	if [ -z "$src" ]; then src=$a; continue; fi
	[ -e "$src" ] || die "bind source $src does not exist"
	if [ -d "$src" ]; then mkdir "$STAGE/b$i"; else : >"$STAGE/b$i"; fi
	mount --bind "$src" "$STAGE/b$i"
	mount -o remount,bind,ro "$STAGE/b$i"
	i=$((i + 1))
	src=
done

# systemd writes a generated machine id into an empty /etc/machine-id: give it one in /run.
if ! grep -qE '^[0-9a-f]{32}$' /etc/machine-id 2>/dev/null; then
	[ -f /etc/machine-id ] || die "host /etc/machine-id is missing (systemd would create it on the host): run systemd-machine-id-setup on the host"
	echo "$TOKEN" >"$S/machine-id"
	mount --bind "$S/machine-id" /etc/machine-id
fi

# 1. Private /tmp, /var/tmp, journal directory: systemd-tmpfiles and journald must never see
#    the host's. x-initrd.mount keeps `systemctl exit` from unmounting them while units run.
mount -t tmpfs -o mode=1777,$TMPFS_OPTS tmpfs /tmp
mount -t tmpfs -o mode=1777,$TMPFS_OPTS tmpfs /var/tmp
if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=2755,$TMPFS_OPTS tmpfs /var/log/journal; fi
# DynamicUser units keep their StateDirectory in /var/lib/private: give the namespace its own
# (an empty 0700 mount point is all that stays on the host, as systemd itself would create it).
[ -d /var/lib/private ] || mkdir -m 0700 /var/lib/private
mount -t tmpfs -o mode=0700,$TMPFS_OPTS tmpfs /var/lib/private
# The library created this empty mount point on the host; the namespace gets its own copy.
if [ -d /var/lib/strata-test ]; then mount -t tmpfs -o mode=0755,$TMPFS_OPTS tmpfs /var/lib/strata-test; fi

# 2. Hide host units and generators behind empty directories.
covered=
cover() {
	[ -d "$1" ] || return 0
	real=$(readlink -f "$1")
	case " $covered " in *" $real "*) return 0 ;; esac
	covered="$covered $real"
	mount -t tmpfs -o mode=0755,$TMPFS_OPTS,noexec tmpfs "$real"
}
cover /etc/systemd/system
for d in /etc/systemd /run/systemd /usr/local/lib/systemd /usr/lib/systemd /lib/systemd; do
	cover "$d/system-generators"
	cover "$d/system-environment-generators"
done

# 3. + private /dev: /dev/console is /dev/null, and nothing systemd or journald creates in
#    /dev (the /dev/log symlink, /dev/shm files) reaches the host's devtmpfs.
ND=$STAGE/dev
mkdir "$ND"
mount -t tmpfs -o mode=0755,nosuid,x-initrd.mount tmpfs "$ND"
mknod -m 0666 "$ND/null" c 1 3
mknod -m 0666 "$ND/zero" c 1 5
mknod -m 0666 "$ND/full" c 1 7
mknod -m 0666 "$ND/random" c 1 8
mknod -m 0666 "$ND/urandom" c 1 9
mknod -m 0666 "$ND/tty" c 5 0
: >"$ND/console"
mount --bind /dev/null "$ND/console"
mkdir "$ND/pts" "$ND/shm" "$ND/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$ND/pts"
ln -s pts/ptmx "$ND/ptmx"
ln -s /proc/self/fd "$ND/fd"
ln -s /proc/self/fd/0 "$ND/stdin"
ln -s /proc/self/fd/1 "$ND/stdout"
ln -s /proc/self/fd/2 "$ND/stderr"
mount --move "$ND" /dev
mount -t tmpfs -o mode=1777,$TMPFS_OPTS tmpfs /dev/shm
mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue

# Sysctls are machine-wide: nothing in here may change the host's.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys

# 4. + 5. Own cgroup tmpfs with the real hierarchies moved into it, and PID 1 in its own
#    subtree of every hierarchy (not v1 cpuset: an empty cpuset cannot hold tasks).
CG=strata-ns-$TOKEN
case $(stat -f -c %T /sys/fs/cgroup) in
cgroup2fs)
	mkdir "/sys/fs/cgroup/$CG"
	echo $$ >"/sys/fs/cgroup/$CG/cgroup.procs"
	;;
tmpfs)
	NC=$STAGE/cgroup
	mkdir "$NC"
	mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$NC"
	for h in /sys/fs/cgroup/*; do
		n=${h##*/}
		if [ -L "$h" ]; then
			ln -s "$(readlink "$h")" "$NC/$n"
		elif mountpoint -q "$h"; then
			mkdir "$NC/$n"
			mount --move "$h" "$NC/$n"
		fi
	done
	mount --move "$NC" /sys/fs/cgroup
	for h in /sys/fs/cgroup/*; do
		[ ! -L "$h" ] && mountpoint -q "$h" || continue
		if [ "$(stat -f -c %T "$h")" = cgroupfs ] && [ -e "$h/cpuset.cpus" ]; then continue; fi
		mkdir "$h/$CG"
		echo $$ >"$h/$CG/cgroup.procs"
	done
	;;
*) die "/sys/fs/cgroup is neither a tmpfs nor cgroup2: $(stat -f -c %T /sys/fs/cgroup)" ;;
esac

# Now that the private mounts exist, put the staged binds at their inside paths.
i=0
src=
for a in "$@"; do
	if [ -z "$src" ]; then src=$a; continue; fi
	dst=$a
	if [ -d "$STAGE/b$i" ]; then
		mkdir -p "$dst"
	elif [ ! -e "$dst" ]; then
		mkdir -p "${dst%/*}"
		: >"$dst"
	fi
	mount --move "$STAGE/b$i" "$dst"
	rmdir "$STAGE/b$i" 2>/dev/null || rm -f "$STAGE/b$i"
	i=$((i + 1))
	src=
done
rmdir "$STAGE/dev" "$STAGE/cgroup" 2>/dev/null || true
rmdir "$STAGE"

# Extra D-Bus policy files (BootOptions::dbus_policy) join the host's system.d in a private
# copy, so the namespace's dbus-daemon lets e.g. strata-supervisor own its name.
if [ -d "$S/dbus-policy" ]; then
	DP=$S/dbus-system.d
	mkdir "$DP"
	mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$DP"
	if [ -d /etc/dbus-1/system.d ]; then cp -a /etc/dbus-1/system.d/. "$DP/"; fi
	cp "$S/dbus-policy"/* "$DP/"
	mkdir -p /etc/dbus-1/system.d
	mount --move "$DP" /etc/dbus-1/system.d
	rmdir "$DP"
fi

# 2. Mask every unit the vendor enables, and the ones that touch the machine; the boot target
#    below pulls in only journald and dbus.
U=/run/systemd/system
mkdir -p "$U" /run/systemd/journald.conf.d
keep() {
	case $1 in
	systemd-journald.service | systemd-journald.socket | systemd-journald-dev-log.socket | \
		dbus.service | dbus.socket | -.slice | system.slice | init.scope | strata-testns.target)
		return 0
		;;
	esac
	return 1
}
mask() {
	n=${1##*/}
	case $n in *.service | *.socket | *.target | *.timer | *.path | *.mount | *.automount | *.swap | *.slice) ;; *) return 0 ;; esac
	keep "$n" && return 0
	[ -e "$U/$n" ] || [ -L "$U/$n" ] || ln -s /dev/null "$U/$n"
}
for d in /usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
	[ -d "$d" ] || continue
	for f in "$d"/*.wants/* "$d"/*.requires/* "$d"/*getty* "$d"/systemd-tmpfiles* \
		"$d"/systemd-udev* "$d"/systemd-logind* "$d"/systemd-sysctl* "$d"/*binfmt* \
		"$d"/systemd-timesyncd*; do
		[ -e "$f" ] || [ -L "$f" ] || continue
		mask "$f"
	done
done
cat >"$U/strata-testns.target" <<EOF
[Unit]
Description=Strata private test systemd $TOKEN
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
Wants=dbus.socket dbus.service
After=systemd-journald.service dbus.socket dbus.service
AllowIsolate=yes
EOF
cat >/run/systemd/journald.conf.d/strata-testns.conf <<EOF
[Journal]
Storage=volatile
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
EOF

# 9. The instance token: the only proof, for the host side, that this namespace is ours.
printf '%s\n' "$OWNER" >"$S/owner"
echo "$TOKEN" >"$S/instance.tmp"
mv "$S/instance.tmp" "$S/instance"
# 10. Shared propagation inside the namespace, as systemd sets it up itself on a host (it skips
#     that step when it sees container=). Credentials need it: systemd 252 builds
#     /run/credentials/<unit> in a child mount namespace and moves it into place, which reaches
#     PID 1's namespace only through a shared /run; with private mounts every LoadCredential=
#     file is missing (EACCES for a DynamicUser). The namespace was created with private
#     propagation, so these peer groups are new and reach no host mount.
mount -n --make-rshared /
say "exec systemd"
# 6. + 3. A clean environment, no terminal: stdin/stdout /dev/null; stderr stays the
#    launcher's pipe so early failures are reported (systemd reopens its stdio itself).
exec env -i container=other /lib/systemd/systemd --system --unit=strata-testns.target \
	--show-status=no </dev/null >/dev/null
