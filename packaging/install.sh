#!/bin/sh
# Install albatross (the Python port) as a service on Linux (systemd) or
# FreeBSD (rc.d). Run from a source checkout, as root:
#
#   packaging/install.sh                      # venv in /opt/albatross
#   packaging/install.sh --dry-run            # only print what would be done
#   packaging/install.sh --destdir /tmp/root  # stage into a directory tree
#
# Options:
#   --prefix DIR    the virtual environment (default /opt/albatross on Linux,
#                   /usr/local/albatross on FreeBSD)
#   --no-venv       PREFIX is an existing environment with albatross
#                   installed; do not create it nor run pip
#   --unitdir DIR   where the systemd units go (default /etc/systemd/system)
#   --destdir DIR   stage everything below DIR (same as DESTDIR=DIR); users
#                   are not created and nothing is chowned or reloaded
#   --os OS         linux or freebsd (default: uname -s)
#   --dry-run       print the commands instead of running them
#
# Environment: PYTHON (default python3, at least 3.11) creates the venv;
# PIP_* variables are honoured by pip.
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
prefix=
unitdir=/etc/systemd/system
venv=yes
dry=
os=$(uname -s)

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
	exit "$1"
}

while [ $# -gt 0 ]; do
	case $1 in
	--prefix) prefix=$2; shift ;;
	--prefix=*) prefix=${1#*=} ;;
	--unitdir|--dest) unitdir=$2; shift ;;
	--unitdir=*|--dest=*) unitdir=${1#*=} ;;
	--destdir) destdir=$2; shift ;;
	--destdir=*) destdir=${1#*=} ;;
	--os) os=$2; shift ;;
	--os=*) os=${1#*=} ;;
	--no-venv) venv=no ;;
	--dry-run|-n) dry=yes ;;
	-h|--help) usage 0 ;;
	*) echo "install.sh: unknown option $1" >&2; usage 2 >&2 ;;
	esac
	shift
done

daemons="albatrossd albatross-console albatross-stats albatross-influx albatross-tls-endpoint"

case $os in
Linux|linux)
	os=linux
	: "${prefix:=/opt/albatross}"
	libexecdir=/usr/libexec/albatross
	clientdir=/usr/bin
	dbdir=/var/lib/albatross
	mandir=/usr/share/man
	compdir=/usr/share/bash-completion/completions
	nologin=/usr/sbin/nologin
	;;
FreeBSD|freebsd)
	os=freebsd
	: "${prefix:=/usr/local/albatross}"
	libexecdir=/usr/local/libexec/albatross
	clientdir=/usr/local/sbin
	dbdir=/var/db/albatross
	mandir=/usr/local/share/man
	compdir=/usr/local/share/bash-completion/completions
	rcdir=/usr/local/etc/rc.d
	nologin=/usr/sbin/nologin
	;;
*)
	echo "install.sh: unsupported system $os" >&2
	exit 1
	;;
esac

# run CMD...: execute, or only print it with --dry-run
run() {
	echo "+ $*"
	[ -n "$dry" ] || "$@"
}

# relocate_venv: a venv staged in DESTDIR$PREFIX runs from PREFIX once
# moved there. pip wrote DESTDIR$PREFIX into the scripts' shebangs, the
# activate scripts and pyvenv.cfg, and the compiled files' source paths.
relocate_venv() {
	for f in "$destdir$prefix"/bin/* "$destdir$prefix/pyvenv.cfg"; do
		[ -f "$f" ] && [ ! -L "$f" ] && grep -qF "$destdir$prefix" "$f" || continue
		echo "+ rewrite $destdir$prefix to $prefix in $f"
		[ -n "$dry" ] && continue
		sed "s|$destdir$prefix|$prefix|g" "$f" >"$f.relocate"
		cat "$f.relocate" >"$f"
		rm -f "$f.relocate"
	done
	run "$destdir$prefix/bin/python" -m compileall -q -f -s "$destdir" -p / "$destdir$prefix/lib"
}

# --- the Python package ------------------------------------------------
if [ "$venv" = yes ]; then
	if [ ! -x "$destdir$prefix/bin/python" ]; then
		run "${PYTHON:-python3}" -m venv "$destdir$prefix"
	fi
	run "$destdir$prefix/bin/pip" install --quiet "$src"
	[ -z "$destdir" ] || relocate_venv
fi

# --- programs ----------------------------------------------------------
run mkdir -p "$destdir$libexecdir" "$destdir$clientdir"
for d in $daemons; do
	run ln -sfn "$prefix/bin/$d" "$destdir$libexecdir/$d"
done
run ln -sfn "$prefix/bin/albatross-client" "$destdir$clientdir/albatross-client"

# --- man pages and bash completion (from the click definitions) ---------
install_docs() {
	py=$destdir$prefix/bin/python
	[ -x "$py" ] || [ -n "$dry" ] || py=$prefix/bin/python
	if [ -z "$dry" ] && ! "$py" -c 'import albatross.client' >/dev/null 2>&1; then
		echo "# $py cannot import albatross: no man pages and no completion installed"
		return 0
	fi
	run "$py" "$src/packaging/manpages.py" "$destdir$mandir"
	for s in 1 8; do
		set -- "$destdir$mandir/man$s/"albatross*."$s"
		[ -e "$1" ] || [ -n "$dry" ] || continue
		run gzip -9nf "$@"
	done
	run mkdir -p "$destdir$compdir"
	echo "+ _ALBATROSS_CLIENT_COMPLETE=bash_source $py -m albatross.client >$destdir$compdir/albatross-client"
	[ -n "$dry" ] || _ALBATROSS_CLIENT_COMPLETE=bash_source "$py" -m albatross.client \
		>"$destdir$compdir/albatross-client"
}
install_docs

# --- user, group and database directory --------------------------------
user_exists() { getent passwd albatross >/dev/null 2>&1; }

if [ -n "$destdir" ]; then
	echo "# DESTDIR set: not creating the user and group albatross"
elif [ "$os" = linux ]; then
	if ! getent group albatross >/dev/null 2>&1; then
		if getent group 496 >/dev/null 2>&1; then gid=; else gid="-g 496"; fi
		run groupadd --system $gid albatross
	fi
	if ! user_exists; then
		if getent passwd 496 >/dev/null 2>&1; then uid=; else uid="-u 496"; fi
		run useradd --system $uid -g albatross -M -d /nonexistent \
			-s "$nologin" albatross
	fi
else
	if ! pw groupshow albatross >/dev/null 2>&1; then
		if pw groupshow -g 496 >/dev/null 2>&1; then gid=; else gid="-g 496"; fi
		run pw groupadd albatross $gid
	fi
	if ! pw usershow albatross >/dev/null 2>&1; then
		if pw usershow -u 496 >/dev/null 2>&1; then uid=; else uid="-u 496"; fi
		run pw useradd albatross $uid -g albatross -d /nonexistent \
			-s "$nologin" -c "albatross daemons"
	fi
fi

# The database belongs to root alone: albatrossd (root) executes tenders found
# in it, writes block devices and the state there, and refuses to start when
# dbdir or dbdir/block is writable by anyone else. None of the unprivileged
# daemons (console, stats, endpoint, influx) needs it.
run mkdir -p "$destdir$dbdir/block"
run chmod 0700 "$destdir$dbdir" "$destdir$dbdir/block"
if [ -z "$destdir" ]; then
	run chown root:0 "$dbdir" "$dbdir/block"
fi

# --- service definitions -----------------------------------------------
if [ "$os" = linux ]; then
	run mkdir -p "$destdir$unitdir"
	for u in "$src"/packaging/systemd/albatross_*; do
		run install -m 0644 "$u" "$destdir$unitdir/"
	done
	# reload only a running systemd, and only for the live system
	if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
		run systemctl daemon-reload
	fi
	cat <<EOF
# Done. Enable the services with
#   systemctl enable --now albatross_console.socket albatross_daemon.socket albatross_stats.socket
#   systemctl enable --now albatross_console.service albatross_daemon.service albatross_stats.service
# (albatross_influx.service and albatross_tls_endpoint.service need settings
# first: systemctl edit <unit>).
EOF
else
	run mkdir -p "$destdir$rcdir"
	for r in "$src"/packaging/rc.d/albatross_*; do
		run install -m 0555 "$r" "$destdir$rcdir/"
	done
	run mkdir -p "$destdir/var/run/albatross/util" "$destdir/var/run/albatross/fifo"
	if [ -z "$destdir" ]; then
		# as albatross_console's precmd: root's, the group reads fifos and binds sockets
		run chown root:albatross /var/run/albatross /var/run/albatross/util /var/run/albatross/fifo
		run chmod 1770 /var/run/albatross/util
		run chmod 2750 /var/run/albatross/fifo
	fi
	cat <<EOF
# Done. Further steps on FreeBSD:
# - let the group albatross use vmm(4): in /etc/devfs.rules
#     add path 'vmm/*' mode 0660 group albatross
# - let albatross-stats see the tenders: sysctl security.bsd.see_other_uids=1
#   and security.bsd.see_other_gids=1 (also in /etc/sysctl.conf)
# - install solo5-hvt on PATH or into $dbdir
# - enable the services in /etc/rc.conf:
#     albatross_console_enable=YES albatross_daemon_enable=YES albatross_stats_enable=YES
# - remote access through inetd (/etc/inetd.conf, port 1025 = blackjack):
#     blackjack stream tcp nowait albatross $libexecdir/albatross-tls-endpoint albatross-tls-endpoint --inetd --syslog /usr/local/etc/albatross/cacert.pem /usr/local/etc/albatross/server.pem /usr/local/etc/albatross/server.key
#   or albatross_tls_enable=YES with albatross_tls_flags naming those files.
EOF
fi
