"""Built-in backends, one per level. Each registers through the `posture` entry points."""
