"""The HTTP side of Intake: the app factory, its dependencies, errors and routes."""
