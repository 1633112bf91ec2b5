"""Facts about a project, the trigger rules, and the decision they lead to."""
