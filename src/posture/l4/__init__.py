"""The parts of the L4 backend: peer discovery, pinned SSH, host keys, git sync over SSH, enrolment."""
