"""The root network helper (`posture netd`) and its client.

client.py: what sessions call (socket path, request, notify). daemon.py: the helper itself
(its nftables rule, the per-session cgroups, slirp4netns). service.py: `posture setup`'s
install and removal. nft.py, cgroups.py, netlink.py: the kernel interfaces only the
helper (and its tests) touch.
"""
