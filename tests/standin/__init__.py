"""Stand-ins for outside services the tests need (the Anthropic Messages API)."""
