"""Tests for mfcd.uapi: every kernel structure layout has the size its uapi header gives it."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mfcd import uapi

LONG = struct.calcsize("@L")
POINTER = struct.calcsize("@P")

# The C structure of each layout, its header, and sizeof() there (x86_64: LONG and POINTER 8).
SIZES: dict[str, tuple[str, str, int]] = {
    "IFREQ_FLAGS": ("struct ifreq", "linux/if.h", 40),
    "SOCK_FILTER": ("struct sock_filter", "linux/filter.h", 8),
    "SOCK_FPROG": ("struct sock_fprog", "linux/filter.h", 2 * POINTER),
    "SOCKADDR_IN": ("struct sockaddr_in", "linux/in.h", 16),
    "GROUP_REQ": ("struct group_req", "linux/in.h", 136),
    "GROUP_SOURCE_REQ": ("struct group_source_req", "linux/in.h", 264),
    "IP_MREQN": ("struct ip_mreqn", "linux/in.h", 12),
    "IN_PKTINFO": ("struct in_pktinfo", "linux/in.h", 12),
    "SOCKADDR_IN6": ("struct sockaddr_in6", "linux/in6.h", 28),
    "VIFCTL": ("struct vifctl", "linux/mroute.h", 16),
    "MFCCTL": ("struct mfcctl", "linux/mroute.h", 60),
    "SIOC_SG_REQ": ("struct sioc_sg_req", "linux/mroute.h", 8 + 3 * LONG),
    "SIOC_VIF_REQ": ("struct sioc_vif_req", "linux/mroute.h", 5 * LONG),
    "IGMPMSG": ("struct igmpmsg", "linux/mroute.h", 20),
    "MIF6CTL": ("struct mif6ctl", "linux/mroute6.h", 12),
    "IF_SET": ("struct if_set", "linux/mroute6.h", 32),
    "MF6CCTL": ("struct mf6cctl", "linux/mroute6.h", 92),
    "SIOC_SG_REQ6": ("struct sioc_sg_req6", "linux/mroute6.h", 56 + 3 * LONG),
    "SIOC_MIF_REQ6": ("struct sioc_mif_req6", "linux/mroute6.h", 5 * LONG),
    "MRT6MSG": ("struct mrt6msg", "linux/mroute6.h", 40),
}


def _layouts() -> dict[str, struct.Struct]:
    return {name: v for name, v in vars(uapi).items() if isinstance(v, struct.Struct)}


def test_every_layout_has_the_size_of_its_uapi_structure() -> None:
    layouts = _layouts()
    assert sorted(layouts) == sorted(SIZES)  # a new layout needs its size here
    for name, layout in layouts.items():
        assert layout.size == SIZES[name][2], SIZES[name][0]
    assert uapi.SOCKADDR_STORAGE == 128  # struct __kernel_sockaddr_storage


def test_the_modules_talking_to_the_kernel_declare_no_layout_of_their_own() -> None:
    from mfcd import kernel, membership, mrdisc, probes  # noqa: PLC0415

    declared = set(map(id, _layouts().values()))
    for module in (kernel, membership, mrdisc, probes):
        for name, value in vars(module).items():
            if isinstance(value, struct.Struct):
                assert id(value) in declared, f"{module.__name__}.{name}: declare it in uapi.py"


def test_the_sizes_are_those_the_c_compiler_gives(tmp_path: Path) -> None:
    """sizeof() of each structure with the installed uapi headers, where a compiler is."""
    cc = shutil.which("cc") or shutil.which("gcc")
    headers = sorted({header for _, header, _ in SIZES.values()})
    if cc is None or not all(Path("/usr/include", h).exists() for h in headers):
        pytest.skip("no C compiler or no kernel headers (linux-libc-dev) here")
    includes = "".join(f"#include <{h}>\n" for h in ["linux/socket.h", *headers])
    prints = "".join(f'printf("%zu\\n", sizeof({c}));\n' for c, _, _ in SIZES.values())
    source = tmp_path / "sizes.c"
    source.write_text(f"#include <stdio.h>\n{includes}int main(void) {{\n{prints}return 0;\n}}\n")
    binary = tmp_path / "sizes"
    subprocess.run([cc, "-o", str(binary), str(source)], check=True, capture_output=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    measured = dict(zip(SIZES, map(int, out.split()), strict=True))
    assert measured == {name: size for name, (_, _, size) in SIZES.items()}
    assert measured == {name: layout.size for name, layout in _layouts().items()}
