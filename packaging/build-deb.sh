#!/bin/sh
# Builds mfcd_<version>_all.deb with dpkg-buildpackage in a git archive copy of the tree.
# Usage: packaging/build-deb.sh [OUTDIR]   (default: dist/; prints the path of the .deb)
set -eu
# shellcheck source-path=SCRIPTDIR source=build-common.sh
. "$(dirname "$0")/build-common.sh"
mkdir "$work/src"
git -C "$top" archive "$rev" | tar -x -C "$work/src"
cd "$work/src"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/mfcd/__init__.py)
if [ "$(dpkg-parsechangelog -S Version)" != "$version" ]; then
    echo "build-deb: debian/changelog is not at version $version (src/mfcd/__init__.py)" >&2
    exit 1
fi
dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
mkdir -p "$out"
cp "$work/mfcd_${version}_all.deb" "$out/"
echo "$out/mfcd_${version}_all.deb"
