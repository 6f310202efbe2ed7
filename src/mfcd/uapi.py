"""Kernel structure layouts from the uapi headers, each declared once with its size asserted.

Every structure mfcd hands to the kernel or reads from it (setsockopt, ioctl, upcalls) is
laid out here, under the header it comes from, and the modules that use it import it:
kernel.py (the multicast routing API), membership.py (group joins), mrdisc.py (router
advertisements), probes.py (`diagnose`). The numbers that go with a layout (the socket
option or ioctl that takes it, its flags) are here when more than one module uses them;
the multicast routing API's own numbers (MRT_*) stay in kernel.py, its only caller.
rtnetlink's messages are netlink.py's alone and stay there.

The sizes are those of `sizeof` against the headers on x86_64. Layouts holding an
unsigned long or a pointer are native (`@`): their sizes follow the word size, and so do
their asserts. tests/unit/test_uapi.py checks every size. Pure: no I/O.
"""

from __future__ import annotations

import struct

_LONG = struct.calcsize("@L")  # unsigned long
_POINTER = struct.calcsize("@P")

# --- linux/if.h, linux/sockios.h ------------------------------------------------------------------

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40
# struct ifreq { char ifr_name[IFNAMSIZ]; union { ...; short ifr_flags; ...; struct ifmap
#   ifr_map; ... }; }: as SIOCGIFFLAGS uses it, the name and then ifr_flags; the union is
#   as large as struct ifmap (24 bytes with 8-byte longs).
IFREQ_FLAGS = struct.Struct("=16sH22x")
assert IFREQ_FLAGS.size == 40

# --- linux/filter.h, asm-generic/socket.h ---------------------------------------------------------

SO_ATTACH_FILTER = 26  # level SOL_SOCKET; takes a struct sock_fprog
# struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }: one classic BPF instruction.
SOCK_FILTER = struct.Struct("=HBBI")
assert SOCK_FILTER.size == 8
# struct sock_fprog { unsigned short len; struct sock_filter *filter; }
SOCK_FPROG = struct.Struct("@HP")
assert SOCK_FPROG.size == 2 * _POINTER  # 16: the pointer is aligned to its size

# --- linux/socket.h, linux/in.h -------------------------------------------------------------------

SOCKADDR_STORAGE = 128  # sizeof(struct __kernel_sockaddr_storage)
# struct sockaddr_in { u16 sin_family; be16 sin_port; in_addr sin_addr; u8 __pad[8]; }
SOCKADDR_IN = struct.Struct("=HH4s8x")
assert SOCKADDR_IN.size == 16
# struct group_req { u32 gr_interface; struct __kernel_sockaddr_storage gr_group; }: 4 bytes
# of padding before the storage, which is 8-aligned on 64-bit (a packed 132 bytes is EINVAL,
# docs/kernel.md C.1). struct group_source_req adds gsr_source.
GROUP_REQ = struct.Struct(f"=I4x{SOCKADDR_STORAGE}s")
GROUP_SOURCE_REQ = struct.Struct(f"=I4x{SOCKADDR_STORAGE}s{SOCKADDR_STORAGE}s")
assert GROUP_REQ.size == 136
assert GROUP_SOURCE_REQ.size == 264
# struct ip_mreqn { in_addr imr_multiaddr; in_addr imr_address; int imr_ifindex; }
IP_MREQN = struct.Struct("=4s4si")
assert IP_MREQN.size == 12
# struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
IN_PKTINFO = struct.Struct("=i4s4s")
assert IN_PKTINFO.size == 12

# --- linux/in6.h ----------------------------------------------------------------------------------

# struct sockaddr_in6 { u16 family; be16 port; u32 flowinfo; in6_addr addr; u32 scope_id; }
SOCKADDR_IN6 = struct.Struct("=HHI16sI")
assert SOCKADDR_IN6.size == 28

# --- linux/mroute.h -------------------------------------------------------------------------------

# struct vifctl { vifi_t vifc_vifi; u8 flags; u8 threshold; u32 rate_limit;
#                 union { in_addr lcl_addr; int lcl_ifindex; }; in_addr rmt_addr; }
VIFCTL = struct.Struct("=HBBIi4s")
assert VIFCTL.size == 16
# struct mfcctl { in_addr origin, mcastgrp; vifi_t parent; u8 ttls[MAXVIFS];
#                 u32 pkt_cnt, byte_cnt, wrong_if; int expire; }
MFCCTL = struct.Struct("=4s4sH32s2xIIIi")
assert MFCCTL.size == 60
# struct sioc_sg_req { in_addr src, grp; unsigned long pktcnt, bytecnt, wrong_if; }
SIOC_SG_REQ = struct.Struct("@4s4sLLL")
assert SIOC_SG_REQ.size == 8 + 3 * _LONG  # 32
# struct sioc_vif_req { vifi_t vifi; unsigned long icount, ocount, ibytes, obytes; }
SIOC_VIF_REQ = struct.Struct("@HLLLL")
assert SIOC_VIF_REQ.size == 5 * _LONG  # 40: vifi padded to the alignment of long
# struct igmpmsg { u32 unused1, unused2; u8 im_msgtype, im_mbz, im_vif, im_vif_hi;
#                  in_addr im_src, im_dst; }: laid over the IP header of the packet's copy.
IGMPMSG = struct.Struct("=8xBBBB4s4s")
assert IGMPMSG.size == 20

# --- linux/mroute6.h ------------------------------------------------------------------------------

# struct mif6ctl { mifi_t mif6c_mifi; u8 mif6c_flags; u8 vifc_threshold; u16 mif6c_pifi;
#                  u32 vifc_rate_limit; }
MIF6CTL = struct.Struct("=HBBH2xI")
assert MIF6CTL.size == 12
# struct if_set { u32 ifs_bits[IF_SETSIZE / 32]; }: 256 bits; bit n = MIF n
IF_SET = struct.Struct("=8I")
assert IF_SET.size == 32
# struct mf6cctl { sockaddr_in6 origin, mcastgrp; mifi_t parent; struct if_set ifset; }
MF6CCTL = struct.Struct(f"={SOCKADDR_IN6.size}s{SOCKADDR_IN6.size}sH2x{IF_SET.size}s")
assert MF6CCTL.size == 92
# struct sioc_sg_req6 { sockaddr_in6 src, grp; unsigned long pktcnt, bytecnt, wrong_if; }
SIOC_SG_REQ6 = struct.Struct(f"@{SOCKADDR_IN6.size}s{SOCKADDR_IN6.size}sLLL")
assert SIOC_SG_REQ6.size == 56 + 3 * _LONG  # 80
# struct sioc_mif_req6 { mifi_t mifi; unsigned long icount, ocount, ibytes, obytes; }
SIOC_MIF_REQ6 = struct.Struct("@HLLLL")
assert SIOC_MIF_REQ6.size == 5 * _LONG  # 40
# struct mrt6msg { u8 im6_mbz, im6_msgtype; u16 im6_mif; u32 im6_pad;
#                  in6_addr im6_src, im6_dst; }
MRT6MSG = struct.Struct("=BBHI16s16s")
assert MRT6MSG.size == 40
