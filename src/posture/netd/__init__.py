"""The root network helper (`posture netd`) and its client.

client.py: what sessions call (socket path, request, notify). daemon.py: the helper itself
(its nftables rule, the per-session cgroups, the op table). loop.py: its event loop;
workers.py: the fair thread pool; limits.py: the per-uid bounds; requests.py: checking a
request; target.py: which process a uid may attach; slirp.py: slirp4netns and its launchers.
service.py: `posture setup`'s install and removal. nft.py, cgroups.py, netlink.py: the
kernel interfaces only the helper (and its tests) touch.
"""
