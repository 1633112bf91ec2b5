"""L2, the bubblewrap sandbox: its command line (argv.py), seccomp filter, session and backend."""
