"""posture: run a coding agent at the right rung of an isolation ladder."""

__version__ = "0.1.0"
