# Sourced by build-deb.sh and build-rpm.sh: environment, source revision and a scratch directory.
# Sets top (the checkout), out (OUTDIR, default dist/), rev (what to archive) and work (removed
# on exit). rev is $MFCD_BUILD_REV if set, else HEAD plus uncommitted changes to tracked files
# (git stash create), so new files count once git-added; the checkout gets no build debris.
# Debian's python3, not a pyenv or venv one: pybuild and rpmbuild must use Debian's modules.
# shellcheck shell=sh disable=SC2034
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=$(realpath -m "${1:-$top/dist}")
# (The refresh first: after a chmod or touch of a tracked file, git stash create exits 1
# without a word once, and set -e would end the build silently.)
git -C "$top" update-index -q --refresh >/dev/null || true
rev=${MFCD_BUILD_REV:-$(git -C "$top" stash create)}
rev=${rev:-HEAD}
work=$(mktemp -d "${TMPDIR:-/tmp}/mfcd-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
