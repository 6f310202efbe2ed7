"""Builds the .deb and .rpm and checks them; where CI is set, also installs and purges the .deb."""

# Needs Debian's build tools (see .ci/apt-packages). Building and reading the packages
# changes nothing outside a temporary directory. Installing does: it writes to /usr and /etc
# and creates the system user `mfc`, so it runs only where the CI environment variable is
# set (`.ci/run` sets it), never on a newcomer's `make test`. The whole install/purge cycle
# runs once, as root, in a module fixture that records what it saw and always purges the
# package and removes the user it created; the tests then judge the record. The machine must
# not already have mfcd installed: the test skips rather than replace a real installation.

import io
import os
import pwd
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGE = "mfcd"
USER = "mfc"
UNIT = "/lib/systemd/system/mfc_daemon.service"
CONFIG = "/etc/mfc_daemon.conf"
SITE = "/usr/lib/python3/dist-packages"
BUILD_PACKAGES = (
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "python3-build",
    "python3-installer",
    "rpm",
    "systemd",
    "man-db",
    "git",
)
# Where installing and purging may leave traces; compared before install and after purge.
WATCHED_TREES = (
    "/etc/systemd",
    "/lib/systemd/system",
    "/usr/lib/sysusers.d",
    SITE,
    "/usr/share/man",
    "/usr/share/bash-completion",
    "/var/lib/systemd",
    "/var/lib/dpkg/info",
    "/var/lib/mfcd",
    "/run/mfcd",
)
WATCHED_DIRS = ("/etc", "/usr/bin", "/usr/share/doc")  # their entries only
# Backups that useradd/userdel leave of the account files: traces of the user, which Debian
# policy keeps on purge, not of the package.
ACCOUNT_BACKUPS = re.compile(r"/etc/(passwd|group|shadow|gshadow|subuid|subgid)-|/etc/\.pwd\.lock")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, check: bool = False, **extra_env: str) -> Run:
    # The system's environment, not a venv's: the installed package must work on its own.
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root", **extra_env}
    done = subprocess.run(
        args, capture_output=True, text=True, env=env, cwd="/", timeout=300, check=False
    )
    result = Run(done.returncode, done.stdout, done.stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result}")
    return result


def missing_build_prerequisites() -> str | None:
    if shutil.which("dpkg-query", path=SYSTEM_PATH) is None:
        return "not a Debian system"
    status = run("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *BUILD_PACKAGES)
    installed = {line.split()[0] for line in status.stdout.splitlines() if "installed" in line}
    missing = sorted(set(BUILD_PACKAGES) - installed)
    if missing:
        return "build tools missing: " + " ".join(missing)
    if not (ROOT / ".git").exists():
        return "not a git checkout (the build scripts use git archive)"
    return None


def missing_install_prerequisites() -> str | None:
    if not os.environ.get("CI"):
        return (
            "installing the .deb changes this machine (files in /usr and /etc, the system"
            " user mfc): only where CI is set, e.g. `CI=true make test`"
        )
    if os.geteuid() != 0:
        return "needs root (dpkg -i, systemd-sysusers)"
    if run("dpkg-query", "-W", PACKAGE).returncode == 0:
        return f"{PACKAGE} is already known to dpkg here; not replacing it"
    return None


def version() -> str:
    text = (ROOT / "src" / "mfcd" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "(.+)"$', text, re.MULTILINE)
    assert match
    return match.group(1)


def snapshot() -> set[str]:
    paths: set[str] = set()
    for top in WATCHED_TREES:
        for dirpath, dirnames, filenames in os.walk(top):
            paths.update(os.path.join(dirpath, name) for name in dirnames + filenames)
    for top in WATCHED_DIRS:
        paths.update(os.path.join(top, name) for name in os.listdir(top))
    return paths


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def deb_files(deb: Path, *, dirs: bool = False) -> dict[str, str]:
    """Path -> octal mode of the regular files and symlinks (and directories) in a .deb."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        return {
            "/" + member.name.removeprefix("./"): oct(member.mode)
            for member in tar.getmembers()
            if dirs or not member.isdir()
        }


def rpm_files(rpm: Path) -> dict[str, str]:
    """Path -> octal mode of the regular files and symlinks in an .rpm (directories dropped)."""
    listing = run("rpm", "-qp", "--qf", "[%{FILEMODES:octal} %{FILENAMES}\n]", str(rpm), check=True)
    files = {}
    for line in listing.stdout.splitlines():
        mode, path = line.split(" ", 1)
        if not mode.startswith("4"):  # S_IFDIR is 040000
            files[path] = oct(int(mode, 8) & 0o7777)
    return files


@dataclass(frozen=True)
class Built:
    deb: Path
    rpm: Path


@dataclass
class Lifecycle:
    """What installing, using and purging the .deb showed."""

    deb: Path
    install: Run = Run(-1, "", "")
    contents: list[str] = field(default_factory=list)
    conffiles: list[str] = field(default_factory=list)
    passwd: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    module_file: Run = Run(-1, "", "")
    mfcd_version: Run = Run(-1, "", "")
    mfcctl_help: Run = Run(-1, "", "")
    config_load: Run = Run(-1, "", "")
    verify: Run = Run(-1, "", "")
    enabled: bool = False
    purge: Run = Run(-1, "", "")
    left_of_package: list[str] = field(default_factory=list)
    new_paths: list[str] = field(default_factory=list)
    user_kept: bool = False


def build_revision() -> str:
    """`git stash create` of the checkout (HEAD if nothing is changed). Debian 12's git exits
    1 without a word the first time after a tracked file changed only in its inode (a chmod
    or touch: seen in CI), and when another git command holds the index lock: try again."""
    for _ in range(5):
        result = run("git", "-C", str(ROOT), "stash", "create")
        if result.returncode == 0:
            return result.stdout.strip() or "HEAD"
        time.sleep(1)
    raise AssertionError(f"git -C {ROOT} stash create failed 5 times: {result}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The .deb and .rpm, built in a temporary directory from the checkout."""
    reason = missing_build_prerequisites()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("packages")
    # One revision for both packages, even if someone commits in this checkout meanwhile.
    rev = build_revision()
    results = [
        run(str(ROOT / "packaging" / script), str(out), check=True, MFCD_BUILD_REV=rev)
        for script in ("build-deb.sh", "build-rpm.sh")
    ]
    deb, rpm = (Path(result.stdout.strip()) for result in results)
    return Built(deb, rpm)


@pytest.fixture(scope="module")
def lifecycle(built: Built) -> Iterator[Lifecycle]:
    reason = missing_install_prerequisites()
    if reason:
        pytest.skip(reason)
    deb = built.deb
    record = Lifecycle(deb)
    had_user = user_exists()
    before = snapshot()
    package_paths = set(deb_files(deb, dirs=True)) - {"/"}
    preexisting = {path for path in package_paths if os.path.lexists(path)}
    try:
        record.install = run("dpkg", "-i", str(deb))
        record.contents = run("dpkg-query", "-L", PACKAGE).stdout.splitlines()
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
        record.conffiles = [line.split()[0] for line in conffiles.splitlines() if line.strip()]
        record.passwd = run("getent", "passwd", USER).stdout.strip().split(":")
        record.group = run("getent", "group", USER).stdout.strip().split(":")
        record.module_file = run("python3", "-c", "import mfcd; print(mfcd.__file__)")
        record.mfcd_version = run("mfcd", "--version")
        record.mfcctl_help = run("mfcctl", "--help")
        record.config_load = run(
            "python3", "-c", f"from mfcd import config; config.load({CONFIG!r})"
        )
        documented = re.findall(r"man:(\S+)\((\d)\)", Path(UNIT).read_text())
        pages_installed = all(
            Path(f"/usr/share/man/man{sec}/{name}.{sec}.gz").exists() for name, sec in documented
        )
        record.verify = run(
            "systemd-analyze", "verify", f"--man={'yes' if pages_installed else 'no'}", UNIT
        )
        wants = Path("/etc/systemd/system/multi-user.target.wants/mfc_daemon.service")
        record.enabled = wants.is_symlink() and os.readlink(wants) == UNIT
    finally:
        record.purge = run("dpkg", "--purge", PACKAGE)
        record.left_of_package = sorted(
            path for path in package_paths - preexisting if os.path.lexists(path)
        )
        record.new_paths = sorted(
            p for p in snapshot() - before if not ACCOUNT_BACKUPS.fullmatch(p)
        )
        record.user_kept = user_exists()
        if not had_user and user_exists():
            run("userdel", USER)
        if not had_user and run("getent", "group", USER).returncode == 0:
            run("groupdel", USER)
    yield record


def test_installs(lifecycle: Lifecycle) -> None:
    assert lifecycle.install.returncode == 0, lifecycle.install


def test_system_user_and_group(lifecycle: Lifecycle) -> None:
    name, _, uid, gid, _gecos, _home, shell = lifecycle.passwd
    assert name == USER
    assert 0 < int(uid) < 1000
    assert shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert lifecycle.group[0] == USER
    assert lifecycle.group[2] == gid


def expected_files() -> set[str]:
    expected = {
        "/usr/bin/mfcd",
        "/usr/bin/mfcctl",
        UNIT,
        CONFIG,
        "/usr/lib/sysusers.d/mfcd.conf",
        f"{SITE}/mfcd/__init__.py",
        f"{SITE}/mfcd/daemon.py",
        f"{SITE}/mfcd/cli.py",
        f"{SITE}/mfcd/notify.py",
        f"{SITE}/mfcd-{version()}.dist-info/entry_points.txt",
        "/usr/share/doc/mfcd/copyright",
    }
    # Man pages and completion are packaged as far as the tree has them.
    for page in (ROOT / "docs" / "man").glob("*.[0-9]"):
        expected.add(f"/usr/share/man/man{page.suffix[1:]}/{page.name}.gz")
    if (ROOT / "packaging" / "completion" / "mfcctl.bash").exists():
        expected.add("/usr/share/bash-completion/completions/mfcctl")
    return expected


def test_deb_holds_the_files(built: Built) -> None:
    # Read from the .deb itself: needs no installation.
    assert expected_files() - set(deb_files(built.deb)) == set()


def test_files(lifecycle: Lifecycle) -> None:
    assert expected_files() - set(lifecycle.contents) == set()
    assert lifecycle.conffiles == [CONFIG]
    # The installed package is what runs, not a checkout or /usr/local.
    assert lifecycle.module_file.stdout.strip() == f"{SITE}/mfcd/__init__.py"


def test_commands_run(lifecycle: Lifecycle) -> None:
    assert lifecycle.mfcd_version.returncode == 0, lifecycle.mfcd_version
    assert version() in lifecycle.mfcd_version.stdout
    assert lifecycle.mfcctl_help.returncode == 0, lifecycle.mfcctl_help
    assert "usage" in lifecycle.mfcctl_help.stdout.lower()


def test_default_config_is_valid(lifecycle: Lifecycle) -> None:
    # The conffile as shipped must satisfy the daemon's strict parser.
    assert lifecycle.config_load == Run(0, "", "")


def test_unit_verifies_and_is_enabled(lifecycle: Lifecycle) -> None:
    assert lifecycle.verify == Run(0, "", "")
    assert lifecycle.enabled


def test_purge_leaves_only_the_user(lifecycle: Lifecycle) -> None:
    assert lifecycle.purge.returncode == 0, lifecycle.purge
    assert lifecycle.left_of_package == []
    assert lifecycle.new_paths == []
    # Debian policy: a purge keeps system users, since files they own may remain elsewhere.
    assert lifecycle.user_kept


def test_rpm_holds_the_same_files(built: Built) -> None:
    debian_only = "/usr/share/doc/"  # changelog.gz and copyright, required by Debian policy
    deb = {
        path.replace("/usr/lib/python3/dist-packages/", "/PYTHON/").replace(
            "/lib/systemd/", "/usr/lib/systemd/"
        ): mode
        for path, mode in deb_files(built.deb).items()
        if not path.startswith(debian_only)
    }
    # The wheel's license file: dh_python3 drops it (the license is in .../doc/mfcd/copyright).
    rpm_only = re.compile(r"\.dist-info/LICENSE")
    rpm = {
        re.sub(r"^/usr/lib/python3\.\d+/site-packages/", "/PYTHON/", path): mode
        for path, mode in rpm_files(built.rpm).items()
        if not rpm_only.search(path)
    }
    assert rpm == deb
    assert run("rpm", "-qcp", str(built.rpm)).stdout.split() == [CONFIG]
