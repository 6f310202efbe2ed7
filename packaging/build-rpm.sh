#!/bin/sh
# Builds the noarch mfcd rpm with rpmbuild from a git archive tarball of the tree.
# Usage: packaging/build-rpm.sh [OUTDIR]   (default: dist/; prints the path of the .rpm)
# On Debian, rpm's database is empty, hence --nodeps for the BuildRequires.
set -eu
# shellcheck source-path=SCRIPTDIR source=build-common.sh
. "$(dirname "$0")/build-common.sh"
version=$(git -C "$top" show "$rev:src/mfcd/__init__.py" | sed -n 's/^__version__ = "\(.*\)"$/\1/p')
git -C "$top" show "$rev:packaging/mfcd.spec" >"$work/mfcd.spec"
if [ "$(rpmspec -q --srpm --qf '%{version}' "$work/mfcd.spec")" != "$version" ]; then
    echo "build-rpm: packaging/mfcd.spec is not at version $version (src/mfcd/__init__.py)" >&2
    exit 1
fi
git -C "$top" archive --format=tar.gz --prefix="mfcd-$version/" \
    -o "$work/mfcd-$version.tar.gz" "$rev"
rpmbuild -bb --nodeps --define "_topdir $work" --define "_sourcedir $work" \
    --define "_rpmdir $out" --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    "$work/mfcd.spec" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
echo "$out/mfcd-$version-$(rpmspec -q --srpm --qf '%{release}' "$work/mfcd.spec").noarch.rpm"
