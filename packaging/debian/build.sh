#!/bin/sh
# Build albatross_<version>_all.deb from this checkout, without network:
# the Python package goes to /usr/lib/python3/dist-packages and runs on
# Debian's own python3 and python3-* libraries (see control.in).
#
#   packaging/debian/build.sh [--outdir DIR]     # default: dist/
#
# Environment: PYTHON (default: the checkout's .venv/bin/python if present,
# else /usr/bin/python3) runs the generators of the man pages and of the
# bash completion; it needs click and albatross' dependencies importable.
# SOURCE_DATE_EPOCH (default: the last commit's date) sets the timestamps;
# DEB_MAINTAINER the Maintainer field.
set -eu

src=$(cd "$(dirname "$0")/../.." && pwd)
deb=$src/packaging/debian
outdir=$src/dist

while [ $# -gt 0 ]; do
	case $1 in
	--outdir) outdir=$2; shift ;;
	--outdir=*) outdir=${1#*=} ;;
	-h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done

if [ -z "${PYTHON:-}" ]; then
	if [ -x "$src/.venv/bin/python" ]; then PYTHON=$src/.venv/bin/python; else PYTHON=/usr/bin/python3; fi
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

# name, version and console scripts from pyproject.toml
meta=$("$PYTHON" - "$src/pyproject.toml" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(p["version"])
for name, target in p["scripts"].items():
    print(name, target)
EOF
)
version=$(echo "$meta" | sed -n 1p)

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/albatross-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
root=$stage/root
site=$root/usr/lib/python3/dist-packages
doc=$root/usr/share/doc/albatross
mkdir -p "$root/DEBIAN" "$site" "$root/usr/bin" "$root/usr/libexec/albatross" \
	"$root/usr/lib/systemd/system" "$root/usr/share/man/man1" "$root/usr/share/man/man8" \
	"$root/usr/share/bash-completion/completions" "$doc"

# --- the Python package and its metadata (importlib.metadata finds the version)
(cd "$src/src" && find albatross -name __pycache__ -prune -o -type f -name '*.py' -print) |
	while read -r f; do install -D -m 0644 "$src/src/$f" "$site/$f"; done
dist=$site/albatross-$version.dist-info
mkdir -p "$dist"
"$PYTHON" - "$src/pyproject.toml" "$dist" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
out = sys.argv[2]
with open(f"{out}/METADATA", "w") as f:
    f.write(f"Metadata-Version: 2.1\nName: {p['name']}\nVersion: {p['version']}\n"
            f"Summary: {p['description']}\nLicense: {p['license']}\n"
            f"Requires-Python: {p['requires-python']}\n")
    for d in p["dependencies"]:
        f.write(f"Requires-Dist: {d}\n")
with open(f"{out}/entry_points.txt", "w") as f:
    f.write("[console_scripts]\n")
    for name, target in p["scripts"].items():
        f.write(f"{name} = {target}\n")
open(f"{out}/top_level.txt", "w").write("albatross\n")
open(f"{out}/INSTALLER", "w").write("dpkg\n")
EOF

# --- programs: the client in /usr/bin, the daemons in /usr/libexec/albatross
echo "$meta" | sed 1d | while read -r name target; do
	case $name in
	albatross-client) dest=$root/usr/bin/$name ;;
	*) dest=$root/usr/libexec/albatross/$name ;;
	esac
	cat >"$dest" <<EOF
#!/usr/bin/python3
import sys
from ${target%%:*} import ${target#*:}
sys.exit(${target#*:}())
EOF
	chmod 0755 "$dest"
done

# --- systemd units, as they are in packaging/systemd
for u in "$src"/packaging/systemd/albatross_*; do
	install -m 0644 "$u" "$root/usr/lib/systemd/system/"
done

# --- man pages and bash completion, generated from the click definitions
man=$stage/man
PYTHONPATH=$src/src "$PYTHON" "$src/packaging/manpages.py" "$man" >/dev/null
for p in "$man"/man1/*.1 "$man"/man8/*.8; do
	s=${p%/*}; gzip -9n <"$p" >"$root/usr/share/man/${s##*/}/${p##*/}.gz"
done
PYTHONPATH=$src/src _ALBATROSS_CLIENT_COMPLETE=bash_source "$PYTHON" -m albatross.client \
	>"$root/usr/share/bash-completion/completions/albatross-client"
grep -q _ALBATROSS_CLIENT_COMPLETE "$root/usr/share/bash-completion/completions/albatross-client"

# --- documentation
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
maintainer=${DEB_MAINTAINER:-albatross Python port authors <albatross@localhost>}
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$date/" -e "s|@MAINTAINER@|$maintainer|" "$deb/changelog.in" |
	gzip -9n >"$doc/changelog.gz"
{
	echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
	echo "Upstream-Name: albatross"
	echo "Source: https://github.com/robur-coop/albatross"
	echo
	echo "Files: *"
	echo "License: ISC"
	sed -e 's/^$/./' -e 's/^/ /' "$src/LICENSE.md"
} >"$doc/copyright"
gzip -9n <"$src/README.md" >"$doc/README.md.gz"
gzip -9n <"$src/packaging/README.md" >"$doc/README.packaging.md.gz"

# --- control files
for s in postinst prerm postrm; do install -m 0755 "$deb/$s" "$root/DEBIAN/$s"; done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" -e "s|@MAINTAINER@|$maintainer|" "$deb/control.in" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
	xargs md5sum) >"$root/DEBIAN/md5sums"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
chmod -R u=rwX,go=rX "$root"
pkg=$outdir/albatross_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$pkg" >/dev/null
echo "$pkg"
